"""The digest chain on S3 (moto server over real HTTP): `store verify --config` names what was deleted."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer
from recording_helpers import cli, record_with_digests

from extproc.launcher import free_port
from extproc.recording.manifest import generate_keys
from extproc.recording.store.s3 import S3Store


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[S3Store, Any, Path]]:
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port, bucket = free_port(), f"dig-{uuid.uuid4().hex[:12]}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "allow_anonymous: true\nservers: [{name: a, upstream: '127.0.0.1:1'}]\n"
        f"recording: {{store: s3, s3: {{bucket: {bucket}, prefix: rec, endpoint_url: '{url}', region: us-east-1}}}}\n"
    )
    yield S3Store(bucket, "rec", endpoint_url=url, region="us-east-1"), client, config
    server.stop()


def _keys(client: Any, bucket: str, part: str) -> list[str]:
    found = client.list_objects_v2(Bucket=bucket, Prefix="rec").get("Contents", [])
    return [o["Key"] for o in found if part in o["Key"]]


def _verify(config: Path, pub: Path) -> tuple[int, str]:
    result = cli("store", "verify", "--config", str(config), "--public-key", str(pub))
    return result.returncode, result.stdout


async def test_s3_store_verify_names_deleted_session_segments_and_edited_digest(
    s3: tuple[S3Store, Any, Path], tmp_path: Path
) -> None:
    store, client, config = s3
    key, pub = generate_keys(tmp_path / "keys")
    await record_with_digests(store, tmp_path / "spool", key, ["sess-a", "sess-b"])
    assert store.list_sessions() == ["sess-a", "sess-b"]  # digests are not taken for a session
    code, out = _verify(config, pub)
    assert code == 0, out
    assert "OK: 3 digests, 2 sessions, 10 segments listed; signatures checked" in out

    for k in _keys(client, store.bucket, "/sess-b/"):  # a whole session
        client.delete_object(Bucket=store.bucket, Key=k)
    for k in _keys(client, store.bucket, "/sess-a/w/0000000"):  # the last segments of a stream
        if k.rsplit("/", 1)[-1] >= "00000003":
            client.delete_object(Bucket=store.bucket, Key=k)
    [first] = _keys(client, store.bucket, "rec-digests/w/00000000.json")
    body = client.get_object(Bucket=store.bucket, Key=first)["Body"].read()
    client.put_object(Bucket=store.bucket, Key=first, Body=body.replace(b'"final":false', b'"final":true', 1))

    code, out = _verify(config, pub)

    assert code == 1, out
    for phrase in (
        "session 'sess-b' missing (deleted)",
        "session 'sess-a': stream w: segment 3 missing (deleted), listed by digest 0 of writer w",
        "session 'sess-a': stream w: segment 4 missing (deleted)",
        "digest 0 of writer w: signature does not match its content (digest edited)",
        "digest 1 of writer w: does not follow digest 0",
    ):
        assert phrase in out, out
