"""Capture levels through real Envoy and the mcp SDK: at ``shape`` and ``metadata`` no value of any argument or
result reaches the store (file store, and S3 with zstd segments on a moto server), and every session verifies."""

from __future__ import annotations

import base64
import binascii
import gzip
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import zstandard
from gateway_parts import ALLOW_ALL
from moto.server import ThreadedMotoServer
from recording_helpers import cli

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect
from extproc.launcher import free_port
from extproc.recording.manifest import generate_keys
from extproc.recording.replay import load_session
from extproc.recording.store.s3 import S3Store

# Planted values: strings and numbers no recording could hold by chance.
TEXT = "canary-Zq81xT-planted-text"
REGION = "region-Wv42pL-planted"
A, B = 8675309.125, 1.25  # add(a, b) answers 8675310.375
PLANTED = [TEXT.encode(), REGION.encode(), b"8675309.125", b"8675310.375", b"Zq81xT", b"Wv42pL"]


def _policy(level: str) -> str:
    return ALLOW_ALL + f"recording:\n  - servers: [demo]\n    capture: {level}\n"


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str, Any]]:
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port, bucket = free_port(), f"cap-{uuid.uuid4().hex[:12]}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=url, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    yield url, bucket, client
    server.stop()


def _decoded(data: bytes) -> list[bytes]:
    """``data`` and what it holds decompressed (zstd, gzip), and every base64 string in its JSON lines decoded."""
    out = [data]
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        out.append(zstandard.ZstdDecompressor().decompressobj().decompress(data))
    if data.startswith(b"\x1f\x8b"):
        out.append(gzip.decompress(data))
    for blob in list(out):
        for line in blob.splitlines():
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            out += [b for s in _strings(doc) if (b := _b64(s)) is not None]
    return out


def _strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield k
            yield from _strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _strings(v)


def _b64(s: str) -> bytes | None:
    if len(s) < 8 or len(s) % 4:
        return None
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        return None


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (segments, manifests, digests, the spool), by path."""
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _leaks(blobs: dict[str, bytes]) -> list[str]:
    return [f"{name}: {p!r}" for name, data in blobs.items() for b in _decoded(data) for p in PLANTED if p in b]


async def _traffic(url: str, token: str) -> None:
    async with connect(url, token=token) as conn:
        assert (await conn.client.call_tool("echo", {"text": TEXT})).structured_content == {"result": TEXT}
        assert (await conn.client.call_tool("add", {"a": A, "b": B})).structured_content == {"result": A + B}
        got = await conn.client.call_tool("regional_echo", {"region": REGION, "text": TEXT})  # Mcp-Param-Region
        assert got.structured_content == {"result": f"{REGION}: {TEXT}"}
        await conn.client.call_tool("count_slowly", {"n": 2, "delay": 0.01})  # progress over SSE


def _salted(salt: bytes, value: str) -> str:
    return hmac.new(salt, json.dumps(value).encode(), hashlib.sha256).hexdigest()[:32]


@pytest.mark.parametrize("json_response", [False, True], ids=["sse", "json"])
async def test_shape_keeps_names_types_and_salted_hashes_never_values(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path, json_response: bool
) -> None:
    salt_file = tmp_path / "capture.salt"
    salt_file.write_text("0f" * 32)
    key, pub = generate_keys(tmp_path / "keys")
    server = start_mcp_server("demo", json_response, "--param-headers")
    rec = {"capture_salt_file": str(salt_file), "signing_key": str(key)}
    gw = start_authed([server], policy=_policy("shape"), gateway={"recording": rec})
    await _traffic(gw.url(), issuer.mint("alice", aud=gw.endpoint))
    assert any(s["headers"].get("mcp-param-region") == REGION for s in server.seen())  # the server got the values
    gw.stop()

    root = gw.store.root
    stored = _files(root)
    assert _leaks(stored) == []
    everything = b"".join(stored.values())
    assert b'"arguments": {"text": "[shape:string:26:' in everything or b'"text":"[shape:string:26:' in everything
    assert _salted(b"0f" * 32, TEXT).encode() in everything  # matchable against a value one knows
    for sid in gw.store.list_sessions():
        session = load_session(gw.store, sid)
        assert session.capture() == "shape"
        verify = cli("sessions", "verify", sid, "--dir", str(root), "--public-key", str(pub))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "capture shape" in verify.stdout
    calls = [e for sid in gw.store.list_sessions() for e in load_session(gw.store, sid).events]
    starts = [e for e in calls if e["type"] == "exchange.start"]
    assert starts and all(e["capture"] == "shape" for e in starts)
    assert all("mcp-param-region" not in e["headers"] or e["headers"]["mcp-param-region"].startswith("[shape:")
               for e in starts)  # fmt: skip
    shown = cli("sessions", "show", gw.store.list_sessions()[0], "--dir", str(root))
    assert "capture shape" in shown.stdout


async def test_metadata_on_s3_with_zstd_keeps_who_what_and_status_only(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path, moto: tuple[str, str, Any]
) -> None:
    url, bucket, client = moto
    key, pub = generate_keys(tmp_path / "keys")
    server = start_mcp_server("demo", False, "--param-headers")
    s3 = {"bucket": bucket, "prefix": "rec", "endpoint_url": url, "region": "us-east-1"}
    rec = {"store": "s3", "s3": s3, "compression": "zstd", "signing_key": str(key), "segment_max_age_ms": 200}
    gw = start_authed([server], policy=_policy("metadata"), gateway={"recording": rec})
    await _traffic(gw.url(), issuer.mint("alice", aud=gw.endpoint))
    gw.stop()

    objects = client.list_objects_v2(Bucket=bucket).get("Contents", [])
    stored = {o["Key"]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in objects}
    assert any(k.endswith(".zst") or v.startswith(b"\x28\xb5\x2f\xfd") for k, v in stored.items())
    spool = _files(Path(gw.config["recording"]["directory"]))
    assert _leaks({**stored, **spool}) == []
    assert b"[shape:" not in b"".join(_decoded(b"".join(stored.values())))  # no hashes either

    store = S3Store(bucket, "rec", endpoint_url=url, region="us-east-1")
    config = tmp_path / "verify.yaml"
    config.write_text(
        "allow_anonymous: true\nservers: [{name: demo, upstream: '127.0.0.1:1'}]\n"
        f"recording: {{store: s3, s3: {{bucket: {bucket}, prefix: rec, endpoint_url: '{url}', region: us-east-1}}}}\n"
    )
    events = []
    for sid in store.list_sessions():
        session = load_session(store, sid)
        assert session.capture() == "metadata" and not session.problems
        events += session.events
        verify = cli("sessions", "verify", sid, "--config", str(config), "--public-key", str(pub))
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert "capture metadata" in verify.stdout
    calls = [m for e in events if e["type"] == "mcp.request" for m in e["messages"] if m.get("method") == "tools/call"]
    assert sorted(m["params"]["name"] for m in calls) == ["add", "count_slowly", "echo", "regional_echo"]
    assert all(set(m["params"]) == {"name"} for m in calls)  # what was called, not with what
    decisions = [e for e in events if e["type"] == "policy.decision" and "tools/call" in e["call"]]
    assert len(decisions) == 4 and all(d["allowed"] for d in decisions)
