"""Bounded storage: levels per server, the body cap, and file-store retention that records its deletions."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from extproc import settings
from extproc.errors import ConfigError
from extproc.recording.bounds import RETENTION_SESSION, RecordingLevels, Retention, RetentionDeleted
from extproc.recording.events import (
    Event,
    ExchangeEnd,
    ExchangeStart,
    McpRequest,
    McpResponse,
    PolicyDecision,
    ResponseChunk,
    body_fields,
)

SECRET = "s3cr3t-argument-value"
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"t": SECRET}}}
RAW = (
    b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"t":"'
    + SECRET.encode()
    + b'"}}}'
)


def _exchange(levels: RecordingLevels, server: str, ex: str = "e1") -> list[Event | None]:
    events: list[Event] = [
        ExchangeStart(exchange=ex, server=server, method="POST"),
        McpRequest(exchange=ex, messages=[dict(CALL)], body=body_fields(RAW), size=len(RAW)),
        PolicyDecision(exchange=ex, allowed=True, rule="r"),
        McpResponse(exchange=ex, messages=[{"jsonrpc": "2.0", "id": 7, "result": {"t": SECRET}}], body={}, size=60),
        ExchangeEnd(exchange=ex, status=200),
    ]
    return [levels.apply(e) for e in events]


def test_full_is_untouched() -> None:
    out = _exchange(RecordingLevels({}, 1 << 20), "demo")
    assert isinstance(out[1], McpRequest) and out[1].messages == [CALL] and SECRET in out[1].body["raw"]


def test_metadata_keeps_who_what_and_hashes_never_payloads() -> None:
    out = _exchange(RecordingLevels({"demo": "metadata"}, 1 << 20), "demo")
    assert all(e is not None for e in out)
    assert SECRET not in repr(out)
    req = out[1]
    assert isinstance(req, McpRequest)
    assert req.messages == [{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo"}}]
    assert req.body == {"withheld": "recording level metadata", "sha256": hashlib.sha256(RAW).hexdigest()}
    assert req.size == len(RAW)
    resp = out[3]
    assert isinstance(resp, McpResponse) and resp.messages == [{"jsonrpc": "2.0", "id": 7, "result_omitted": True}]
    assert isinstance(out[2], PolicyDecision) and isinstance(out[4], ExchangeEnd)


def test_off_records_nothing_of_that_server_only() -> None:
    levels = RecordingLevels({"quiet": "off"}, 1 << 20)
    assert _exchange(levels, "quiet", "e1") == [None] * 5
    assert all(e is not None for e in _exchange(levels, "demo", "e2"))
    assert levels._by_exchange == {}  # nothing kept once exchanges end


def test_body_cap_applies_at_every_level() -> None:
    levels = RecordingLevels({}, 1024)
    big = b"x" * 2000
    chunk = levels.apply(ResponseChunk(exchange="e", body=body_fields(big), size=len(big)))
    assert isinstance(chunk, ResponseChunk)
    assert chunk.body == {"withheld": "over recording.max_event_body_bytes", "sha256": hashlib.sha256(big).hexdigest()}
    small = levels.apply(ResponseChunk(exchange="e", body=body_fields(b"ok"), size=2))
    assert isinstance(small, ResponseChunk) and small.body == {"raw": "ok"}


BASE = {"servers": [{"name": "demo", "upstream": "h:1"}], "allow_anonymous": True}


@pytest.mark.parametrize(
    ("recording", "message"),
    [
        pytest.param({"servers": {"demo": "off"}}, "off_acknowledged", id="off-needs-a-reason"),
        pytest.param({"servers": {"nosuch": "metadata"}}, "nosuch not in servers", id="unknown-server"),
        pytest.param({"servers": {"demo": "some"}}, "recording.servers.demo", id="bad-level"),
        pytest.param(
            {"store": "s3", "s3": {"bucket": "bkt"}, "retention": {"max_age_days": 1}}, "file store only", id="s3"
        ),
        pytest.param({"retention": {}}, "max_age_days, max_total_bytes", id="no-bound"),
    ],
)
def test_settings_refuse(recording: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings.parse({**BASE, "recording": recording})


def test_off_with_a_reason_loads() -> None:
    s = settings.parse({**BASE, "recording": {"servers": {"demo": "off"}, "off_acknowledged": "health checks only"}})
    assert s.recording.servers == {"demo": "off"}


def _session(root: Path, name: str, size: int, age_s: float, now: float) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "w1.jsonl").write_bytes(b"x" * size)
    (folder / "w1.manifests").write_bytes(f'{{"n": "{name}"}}\n'.encode())
    for p in folder.iterdir():
        os.utime(p, (now - age_s, now - age_s))


def _retention(root: Path, **kw: object) -> tuple[Retention, list[Event]]:
    emitted: list[Event] = []

    def emit(ev: Event) -> bool:
        emitted.append(ev)
        return True

    return Retention(root, emit, clock=lambda: 10_000.0, **kw), emitted  # type: ignore[arg-type]


def test_retention_by_age_then_size_records_each_deletion_first(tmp_path: Path) -> None:
    now = 10_000.0
    _session(tmp_path, "old", 100, 5000, now)
    _session(tmp_path, "mid", 400, 300, now)
    _session(tmp_path, "new", 400, 10, now)
    _session(tmp_path, RETENTION_SESSION, 10_000, 9000, now)  # the deletions' own record is never deleted
    retention, emitted = _retention(tmp_path, max_age_s=3600, max_total_bytes=600)
    assert retention.sweep() == 2
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [RETENTION_SESSION, "new"]
    assert [(e.deleted_session, e.reason) for e in emitted] == [("old", "age"), ("mid", "size")]  # type: ignore[attr-defined]
    first = emitted[0]
    assert isinstance(first, RetentionDeleted) and first.session == RETENTION_SESSION
    assert first.files == ["w1.jsonl", "w1.manifests"] and first.bytes == 100 + len(b'{"n": "old"}\n')
    assert first.manifests_sha256 == {"w1": hashlib.sha256(b'{"n": "old"}\n').hexdigest()}


def test_retention_deletes_nothing_it_cannot_record(tmp_path: Path) -> None:
    _session(tmp_path, "old", 100, 5000, 10_000.0)
    retention = Retention(tmp_path, lambda ev: False, max_age_s=1, max_total_bytes=None, clock=lambda: 10_000.0)
    assert retention.sweep() == 0 and (tmp_path / "old").is_dir()


def test_one_sweeper_at_a_time(tmp_path: Path) -> None:
    import fcntl

    _session(tmp_path, "old", 100, 5000, 10_000.0)
    retention, _ = _retention(tmp_path, max_age_s=1, max_total_bytes=None)
    with open(tmp_path / ".retention.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        assert retention.sweep() == 0  # another worker holds the lock
    assert retention.sweep() == 1
