"""The transparency log on S3 (moto server over real HTTP): tiles and checkpoints beside the recordings, proofs
and the CLI read them back through the store's own client."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from evidence_helpers import ORIGIN
from moto.server import ThreadedMotoServer
from recording_helpers import cli, emit_exchanges

from extproc.evidence.config import CheckpointBucket, TransparencyLogConfig
from extproc.evidence.proofs import check_checkpoint, log_keys, prove_session
from extproc.evidence.tiles import blobs_for
from extproc.launcher import free_port
from extproc.recording.config import S3, Recording
from extproc.recording.manifest import generate_keys, load_public_key
from extproc.recording.setup import build_runtime, build_store


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[str, str, Any]]:
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port, bucket = free_port(), f"tlog-{uuid.uuid4().hex[:12]}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    client.create_bucket(Bucket=f"{bucket}-cp", ObjectLockEnabledForBucket=True)
    yield url, bucket, client
    server.stop()


async def test_the_log_on_s3_proves_a_session_and_the_cli_reads_it(s3: tuple[str, str, Any], tmp_path: Path) -> None:
    url, bucket, client = s3
    key, pub = generate_keys(tmp_path / "keys")
    rec = Recording(
        store="s3",
        s3=S3(bucket=bucket, prefix="rec", endpoint_url=url, region="us-east-1"),
        spool_directory=tmp_path / "spool",
        signing_key=key,
        flush_interval_ms=10,
        transparency_log=TransparencyLogConfig(
            origin=ORIGIN,
            checkpoint_interval_s=3600,
            checkpoint_bucket=CheckpointBucket(
                bucket=f"{bucket}-cp", prefix="cp", endpoint_url=url, region="us-east-1", retain_days=1
            ),
        ),
    )
    runtime = build_runtime(rec)
    await runtime.start()
    await emit_exchanges(runtime.recorder, "sess-s3", 3)
    await runtime.close()

    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="rec-tlog/")["Contents"]]
    assert any(k.endswith("/checkpoint") for k in keys) and any("/tile/0/000.p/" in k for k in keys)
    store, public = build_store(rec), load_public_key(pub)
    blobs = blobs_for(store)
    [log] = log_keys(blobs)
    assert check_checkpoint(blobs, log, public).problems == []
    proof = prove_session(store, blobs, "sess-s3", public)
    assert proof.ok and len(proof.segments) == 4, [s.problem for s in proof.segments]

    config = tmp_path / "gateway.yaml"
    config.write_text(
        "allow_anonymous: true\nservers: [{name: a, upstream: '127.0.0.1:1'}]\n"
        f"recording: {{store: s3, s3: {{bucket: {bucket}, prefix: rec, endpoint_url: '{url}', region: us-east-1}},\n"
        f"  signing_key: {key}, transparency_log: {{origin: {ORIGIN}}}}}\n"
    )
    r = cli("evidence", "prove", "sess-s3", "--config", str(config))
    assert r.returncode == 0 and "4/4 segments proven" in r.stdout, r.stdout + r.stderr

    # Every checkpoint also went to the Object Lock bucket, write-once: not even its owner deletes it early.
    latest = check_checkpoint(blobs, log, public).checkpoint
    assert latest is not None
    copy_key = f"cp/{log}/checkpoints/{latest.size:012d}"
    head = client.head_object(Bucket=f"{bucket}-cp", Key=copy_key)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    body = client.get_object(Bucket=f"{bucket}-cp", Key=copy_key)["Body"].read()
    assert body == blobs.get(f"{log}/checkpoint")
    with pytest.raises(ClientError):
        client.delete_object(Bucket=f"{bucket}-cp", Key=copy_key, VersionId=head["VersionId"])
