"""Durable recording through real parts: Envoy, processor(s), MCP SDK servers, and S3 over real HTTP (moto server).

moto does not enforce Content-MD5 / checksums nor forbid shortening COMPLIANCE retention, so nothing here claims
those; what is claimed is what moto does implement: Object Lock refusing deletes of locked versions.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
import zygote
from botocore.exceptions import ClientError
from evidence_helpers import ORIGIN, logged_entries, stored_entries
from gateway_parts import open_session, unit_key
from moto.server import ThreadedMotoServer

from extproc.demo.mcp_client import run_session
from extproc.evidence.tiles import blobs_for
from extproc.launcher import free_port, wait_until
from extproc.recording.manifest import generate_keys, load_public_key
from extproc.recording.replay import Session, load_session
from extproc.recording.store.s3 import S3Store
from extproc.reserved import server_unit

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
REFUSED = "recording unavailable; request refused"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "250"}
    return zygote.run_command([sys.executable, "-m", "extproc", *args], timeout=60, env=env)


@dataclass
class Moto:
    """A moto S3 server on loopback; ``stop``/``start`` keep its state (moto's backends live in this process)."""

    port: int
    bucket: str
    server: ThreadedMotoServer | None = None
    client: Any = field(default=None)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def store(self) -> S3Store:
        return S3Store(self.bucket, "rec", endpoint_url=self.url, region="us-east-1")


@pytest.fixture
def moto(monkeypatch: pytest.MonkeyPatch) -> Iterator[Moto]:
    # The processors find credentials where boto3's default chain looks: here, the environment.
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    m = Moto(free_port(), f"rec-{uuid.uuid4().hex[:12]}")
    m.start()
    m.client = boto3.client("s3", endpoint_url=m.url, region_name="us-east-1")
    m.client.create_bucket(Bucket=m.bucket, ObjectLockEnabledForBucket=True)
    yield m
    m.stop()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keys(tmp_path / "keys")


def _s3_recording(moto: Moto, key: Path, **extra: Any) -> dict[str, Any]:
    return {
        "store": "s3",
        "s3": {
            "bucket": moto.bucket,
            "prefix": "rec",
            "endpoint_url": moto.url,
            "region": "us-east-1",
            "object_lock": {"mode": "COMPLIANCE", "retain_days": 1},
        },
        "signing_key": str(key),
        "segment_max_age_ms": 200,
        **extra,
    }


def _echo(url: str, headers: dict[str, str], text: str, n: int) -> httpx.Response:
    call = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": text}}}
    return httpx.post(url, json=call, headers=headers, timeout=20)


def _requests(session: Session) -> list[dict[str, Any]]:
    return [m for e in session.events if e["type"] == "mcp.request" for m in e["messages"]]


def _echo_texts(session: Session) -> list[str]:
    return [m["params"]["arguments"]["text"] for m in _requests(session) if m.get("params", {}).get("name") == "echo"]


def _log_value(log: Path, name: str) -> list[float]:
    return [float(v) for v in re.findall(rf"{name}=([0-9.]+)", log.read_text())]


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
async def test_session_lands_in_s3_signed_verified_and_locked(
    start_mcp_server, start_gateway, moto: Moto, keys: tuple[Path, Path], compression: str
) -> None:
    key, pub = keys
    gw = start_gateway([start_mcp_server("demo")], recording=_s3_recording(moto, key, compression=compression))
    result = await run_session(gw.url(), mode="legacy")  # a 2025 session: initialize ... DELETE, then final
    gw.stop()

    session = load_session(moto.store(), unit_key(moto.store(), result.session_id), load_public_key(pub))
    assert session.problems == [] and session.unfinished == []
    assert [m.get("method") for m in _requests(session)][:3] == [
        "initialize",
        "notifications/initialized",
        "tools/list",
    ]
    assert session.summary()["state"] == "complete"
    verify = _cli("sessions", "verify", result.session_id, "--config", str(gw.stack.config), "--public-key", str(pub))
    assert verify.returncode == 0, verify.stdout
    assert "signatures checked" in verify.stdout

    versions = moto.client.list_object_versions(Bucket=moto.bucket, Prefix="rec/")["Versions"]
    ext = {"zstd": r"\.zst", "gzip": r"\.gz"}[compression]
    unit = re.escape(server_unit("demo", "", result.session_id))
    shape = rf"rec/\d{{4}}/\d{{2}}/\d{{2}}/{unit}/[^/]+/\d{{8}}\.(jsonl{ext}|manifest\.json)"
    assert versions and all(re.fullmatch(shape, v["Key"]) for v in versions), [v["Key"] for v in versions]
    for v in versions[:4]:
        head = moto.client.head_object(Bucket=moto.bucket, Key=v["Key"], ChecksumMode="ENABLED")
        body = moto.client.get_object(Bucket=moto.bucket, Key=v["Key"])["Body"].read()
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(body).digest()).decode()  # sent with it
        assert head["ObjectLockMode"] == "COMPLIANCE"
    for v in versions:  # Object Lock: no locked version can be deleted
        with pytest.raises(ClientError, match="AccessDenied"):
            moto.client.delete_object(Bucket=moto.bucket, Key=v["Key"], VersionId=v["VersionId"])
    assert len(moto.client.list_object_versions(Bucket=moto.bucket, Prefix="rec/")["Versions"]) == len(versions)
    latency = _log_value(gw.log, "upload_latency_ms_p50")
    print(f"\nS3 ({compression}) upload latency p50 {latency} ms, p95 {_log_value(gw.log, 'upload_latency_ms_p95')}")


async def test_s3_outage_loses_nothing_and_duplicates_nothing(
    start_mcp_server, start_gateway, moto: Moto, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    server = start_mcp_server("demo")
    # A seal at every exchange end (as often as the flush interval allows): the outage must leave several segments.
    gw = start_gateway([server], recording={**_s3_recording(moto, key), "seal_interval_ms": 50})
    spool = Path(gw.config["recording"]["directory"]) / ".spool"
    headers = open_session(gw.url())
    sid = headers["mcp-session-id"]
    for i in range(3):
        assert _echo(gw.url(), headers, f"before-{i}", 10 + i).status_code == 200

    moto.stop()  # S3 goes away mid-session
    for i in range(10):  # traffic keeps flowing: the spool takes it
        assert _echo(gw.url(), headers, f"during-{i}", 20 + i).status_code == 200
    wait_until(lambda: len(list(spool.rglob("[0-9]*.manifest"))) >= 5, 20, "sealed segments waiting in the spool")
    waiting = len(list(spool.rglob("[0-9]*.manifest")))

    moto.start()  # same port, same state
    for i in range(3):
        assert _echo(gw.url(), headers, f"after-{i}", 40 + i).status_code == 200
    wait_until(lambda: not list(spool.rglob("[0-9]*.manifest")), 60, "the spool to drain into S3")
    httpx.request("DELETE", gw.url(), headers=headers, timeout=10)
    gw.stop()

    session = load_session(moto.store(), unit_key(moto.store(), sid), load_public_key(pub))
    assert session.problems == [] and session.unfinished == []
    expected = [f"before-{i}" for i in range(3)] + [f"during-{i}" for i in range(10)] + [f"after-{i}" for i in range(3)]
    assert _echo_texts(session) == expected  # every event arrived, in order, once
    assert len({(e["_writer"], e["seq"]) for e in session.events}) == len(session.events)  # nothing duplicated
    seen = [r["tool"] for r in server.seen() if r["tool"] == "echo"]
    assert len(seen) == len(expected)
    print(f"\n{waiting} segments waited in the spool during the outage; all {len(session.events)} events arrived")


def test_killed_processor_leaves_an_incomplete_exchange_with_everything_written(
    start_mcp_server, start_gateway, keys: tuple[Path, Path]
) -> None:
    key, pub = keys
    recording = {
        "signing_key": str(key),
        "segment_max_age_ms": 200,
        "digest_interval_s": 0.5,  # the writer stores digests too before it is killed
        "transparency_log": {"origin": ORIGIN, "checkpoint_interval_s": 3600},  # no checkpoint before the kill
    }
    gw = start_gateway([start_mcp_server("demo")], recording=recording)
    spool = Path(gw.config["recording"]["directory"]) / ".spool"
    headers = open_session(gw.url())
    sid = headers["mcp-session-id"]
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "count_slowly", "arguments": {"n": 40, "delay": 0.1}, "_meta": {"progressToken": "p"}},
    }
    written: list[bytes] = []
    try:
        with httpx.stream("POST", gw.url(), json=call, headers=headers, timeout=20) as r:
            for n, line in enumerate(r.iter_lines()):
                if n >= 4 and '"progress"' in line and not written:
                    # In flight, and a segment is being written (segments are sealed and shipped every 200 ms, so
                    # some moments find the spool empty): snapshot what is there, then kill -9.
                    written = [ln for p in sorted(spool.rglob("*.seg")) for ln in p.read_bytes().splitlines()]
                    if written:
                        gw.stack.processors[0].kill()
    except httpx.HTTPError:
        pass  # Envoy resets the stream: the processor is gone
    assert written  # the segment being written when the processor died (earlier ones were already stored)

    gw.stack.restart_worker(0)  # its completer adopts the dead writer's spool at start-up

    def marked() -> bool:
        sessions = {s for s in gw.store.list_sessions()}
        return unit_key(gw.store, sid) in sessions and gw.session(sid).summary()["state"] == "incomplete"

    wait_until(marked, 30, "the exchange to be marked incomplete")
    gw.stop()

    session = load_session(gw.store, unit_key(gw.store, sid), load_public_key(pub))
    assert session.problems == [] and session.unfinished == []
    stored = {ln for s in gw.store.read_session(unit_key(gw.store, sid)).values() for ln in s.data.splitlines()}
    assert [ln for ln in written if ln not in stored] == []  # every event written before the kill is kept
    doc = json.loads(_cli("sessions", "show", sid, "--dir", str(gw.store.root), "--json").stdout)
    [incomplete] = [x for x in doc["exchanges"] if x["outcome"] == "incomplete"]
    assert incomplete["method"] == "POST" and incomplete["incomplete"].startswith("processor stopped")
    assert [m["params"]["name"] for e in incomplete["events"] if e["type"] == "mcp.request" for m in e["messages"]] == [
        "count_slowly"
    ]
    progress = [e for e in incomplete["events"] if e["type"] == "mcp.response"]
    assert len(progress) >= 1  # the partial log of the killed call stays
    rows = json.loads(_cli("sessions", "list", "--dir", str(gw.store.root), "--json").stdout)
    assert next(r for r in rows if r["session"] == server_unit("demo", "", sid))["state"] == "incomplete"
    verify = _cli("sessions", "verify", sid, "--dir", str(gw.store.root), "--public-key", str(pub))
    assert verify.returncode == 0, verify.stdout
    # The transparency log lost nothing with the processor: what it stored after its last checkpoint (and the
    # closing digest the completer stored for it) are leaves of the restarted worker's log; every log audits.
    assert stored_entries(gw.store) - logged_entries(blobs_for(gw.store), load_public_key(pub)) == set()


def test_an_exchange_answered_just_before_a_kill_is_recorded_whole(start_mcp_server, start_gateway) -> None:
    # Flush and seal intervals far longer than the test: the writer neither writes nor fsyncs nor seals anything of
    # the exchange before the kill. What the client got must be on disk all the same: its commit points wrote it.
    recording = {"flush_interval_ms": 30_000, "seal_interval_ms": 60_000, "segment_max_age_ms": 60_000}
    gw = start_gateway([start_mcp_server("demo")], recording=recording)
    headers = open_session(gw.url())
    sid = headers["mcp-session-id"]
    call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "k"}}}
    r = httpx.post(gw.url(), json=call, headers=headers, timeout=10)
    assert r.status_code == 200 and '"k"' in r.text
    gw.stack.processors[0].kill()  # kill -9 as soon as the answer is in

    gw.stack.restart_worker(0)  # its completer adopts the dead writer's spool at start-up and ships it

    def echo_ended() -> list[dict[str, Any]]:
        if unit_key(gw.store, sid) not in set(gw.store.list_sessions()):
            return []
        session = load_session(gw.store, unit_key(gw.store, sid))
        echo = {e["exchange"] for e in session.events if e["type"] == "mcp.request" and "echo" in json.dumps(e)}
        return [e for e in session.events if e["type"] == "exchange.end" and e["exchange"] in echo]

    wait_until(lambda: bool(echo_ended()), 30, "the echo exchange in the store")
    [end] = echo_ended()
    assert end["outcome"] == "complete"  # whole: its end too, not an exchange the completer marked incomplete
    gw.stop()


async def test_spool_full_refuses_with_503_and_forwards_nothing(
    start_mcp_server, start_gateway, moto: Moto, keys: tuple[Path, Path]
) -> None:
    key, _ = keys
    server = start_mcp_server("demo")
    gw = start_gateway([server], recording=_s3_recording(moto, key, spool_max_bytes=16 << 10))
    headers = open_session(gw.url())
    moto.stop()
    refused = None
    for i in range(60):
        r = _echo(gw.url(), headers, f"{i}-" + "x" * 3000, 100 + i)
        if r.status_code != 200:
            refused = r
            break
    assert refused is not None and refused.status_code == 503
    assert refused.json()["error"]["message"] == REFUSED
    assert len([r for r in server.seen() if r["tool"] == "echo"]) == i  # the refused call never left Envoy

    moto.start()
    wait_until(lambda: _echo(gw.url(), headers, "again", 999).status_code == 200, 60, "recording to accept again")
    gw.stop()


@pytest.mark.parametrize("required", [True, False], ids=["required", "optional"])
def test_unwritable_store_directory(start_mcp_server, start_gateway, tmp_path: Path, required: bool) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the recordings folder should be")
    server = start_mcp_server("demo")
    gw = start_gateway([server], recording={"directory": str(blocker / "rec"), "required": required})

    r = httpx.post(gw.url(), json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=ACCEPT, timeout=10)

    if required:
        assert r.status_code == 503
        assert r.headers["content-type"] == "application/json"
        assert r.json()["error"]["message"] == REFUSED
        assert server.seen() == []  # nothing forwarded unrecorded
    else:
        assert r.status_code != 503
        assert len(server.seen()) == 1
        gw.stop()
        assert sum(_log_value(gw.log, "lost_events")) >= 2  # start, request, … all counted as lost


async def test_workers_share_the_load_and_sessions_merge(start_mcp_server, start_gateway) -> None:
    gw = start_gateway([start_mcp_server("demo")], processor={"workers": 3})
    results = [await run_session(gw.url(), mode="legacy") for _ in range(6)]  # one session id across workers
    gw.stop()

    per_writer: Counter[str] = Counter()
    spread = []
    for result in results:
        session = gw.session(result.session_id)
        assert session.problems == [] and session.unfinished == []
        starts = [e for e in session.events if e["type"] == "exchange.start"]
        per_writer.update(e["_writer"] for e in starts)
        spread.append(len({e["_writer"] for e in starts}))
        assert result.echo["structuredContent"] == {"result": "hello"}
    print(f"\nexchanges per worker: {sorted(per_writer.values())}; writers per session: {spread}")
    assert len(per_writer) == 3  # every worker took exchanges
    assert max(per_writer.values()) < sum(per_writer.values())  # no single worker took everything
    assert max(spread) >= 2  # a session's exchanges landed on several workers and were merged back
