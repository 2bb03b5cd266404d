"""The recorder: ordered, hash-chained, one stream per (session, writer); a failing store loses nothing."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from extproc.errors import StoreError
from extproc.recording.chain import chain_line
from extproc.recording.events import ExchangeEnd, ExchangeStart, McpRequest
from extproc.recording.manifest import GENESIS
from extproc.recording.recorder import Recorder
from extproc.recording.replay import load_session, verify_stream
from extproc.recording.spool import Spool
from extproc.recording.store import Segment, StreamData
from extproc.recording.store.file import FileStore
from extproc.recording.writer import RecorderOptions


async def wait_for(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait on a condition (not a fixed sleep)."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        await asyncio.sleep(0.002)


def _events(session: str, n: int, exchange: str = "ex1", t0: float = 1000.0) -> list[McpRequest]:
    return [
        McpRequest(session=session, exchange=exchange, index=i, time=t0 + i, messages=[{"i": i}], size=i)
        for i in range(n)
    ]


def _jsonl_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jsonl"))


def _lines(data: bytes) -> list[dict]:
    return [json.loads(line) for line in data.splitlines()]


def test_chain_line_puts_chain_fields_first_and_keeps_unicode() -> None:
    line = chain_line(3, GENESIS, {"type": "mcp.request", "text": "héllo"})

    assert line == ('{"seq":3,"prev":"' + GENESIS + '","type":"mcp.request","text":"héllo"}').encode()


async def test_events_are_written_in_order_with_a_valid_chain(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    rec = Recorder(store, Spool.beside(store, "w1"), RecorderOptions(flush_interval=0.01))
    await rec.start()
    sent = [ExchangeStart(session="s1", exchange="e", index=0, time=1.0, server="weather"), *_events("s1", 5)]
    sent.append(ExchangeEnd(session="s1", exchange="e", index=9, time=9.0, outcome="complete"))

    assert all(rec.emit(e) for e in sent)
    await rec.close()
    await store.close()

    data = store.read_session("s1")["w1"].data
    events, problems = verify_stream("w1", data)
    assert problems == []
    assert [e["seq"] for e in events] == list(range(7))
    assert [e["type"] for e in events] == ["exchange.start", *["mcp.request"] * 5, "exchange.end"]
    assert [e.get("messages") for e in events[1:6]] == [[{"i": i}] for i in range(5)]
    # The chain is the SHA-256 of the exact previous line.
    lines = data.splitlines()
    assert events[0]["prev"] == GENESIS
    assert all(events[i]["prev"] == hashlib.sha256(lines[i - 1]).hexdigest() for i in range(1, 7))
    assert rec.written_events == 7
    assert rec.lost_events == 0


async def test_each_session_has_its_own_file_and_chain(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    rec = Recorder(store, Spool.beside(store, "w1"), RecorderOptions(flush_interval=0.01))
    await rec.start()
    for a, b in zip(_events("alpha", 3), _events("beta", 3), strict=True):  # interleaved
        rec.emit(a)
        rec.emit(b)
    await rec.close()
    await store.close()

    assert store.list_sessions() == ["alpha", "beta"]
    assert _jsonl_files(tmp_path) == [
        "alpha/w1.jsonl",
        "beta/w1.jsonl",
    ]
    for sid in ("alpha", "beta"):
        events, problems = verify_stream("w1", store.read_session(sid)["w1"].data)
        assert problems == []
        assert [(e["session"], e["seq"], e["index"]) for e in events] == [(sid, i, i) for i in range(3)]


async def test_two_writers_on_one_session_are_merged_in_time_order(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    rec_a = Recorder(store, Spool.beside(store, "proc-a"), RecorderOptions(flush_interval=0.01))
    rec_b = Recorder(store, Spool.beside(store, "proc-b"), RecorderOptions(flush_interval=0.01))
    await rec_a.start()
    await rec_b.start()
    # Two processor workers handle alternate exchanges of the same MCP session.
    for t in (1.0, 3.0, 5.0):
        rec_a.emit(McpRequest(session="sess", exchange=f"a{t}", time=t))
    for t in (2.0, 4.0, 6.0):
        rec_b.emit(McpRequest(session="sess", exchange=f"b{t}", time=t))
    await rec_a.close()
    await rec_b.close()
    await store.close()

    assert sorted(store.read_session("sess")) == ["proc-a", "proc-b"]
    session = load_session(store, "sess")
    assert session.problems == []
    assert sorted(session.writers) == ["proc-a", "proc-b"]
    assert [e["time"] for e in session.events] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert [e["_writer"] for e in session.events] == ["proc-a", "proc-b"] * 3
    # Each writer keeps its own chain: both start at seq 0.
    assert [e["seq"] for e in session.events] == [0, 0, 1, 1, 2, 2]


def test_emit_when_queue_full_returns_false_and_counts() -> None:
    store = FileStore("/nonexistent-never-written")
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(queue_size=2))  # not started: nothing drains

    results = [rec.emit(e) for e in _events("s", 5)]

    assert results == [True, True, False, False, False]
    assert rec.lost_events == 3
    assert rec.accepting is False


async def test_close_flushes_everything(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    # A long flush interval and no exchange.end: only close() makes these reach the file.
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=60, queue_size=5000))
    await rec.start()
    for e in _events("s", 1300):  # more than one batch
        assert rec.emit(e)

    await rec.close()
    await store.close()

    events, problems = verify_stream("w", store.read_session("s")["w"].data)
    assert problems == []
    assert [e["index"] for e in events] == list(range(1300))
    assert rec.written_events == 1300


async def test_close_without_start_is_a_no_op(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    rec = Recorder(store, Spool.beside(store, "w"))

    await rec.close()

    assert _jsonl_files(tmp_path) == []


async def test_flushed_waits_until_durable_in_the_spool(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=0.01, segment_age=60))
    await rec.start()
    for e in _events("s", 10):
        rec.emit(e)

    await rec.flushed(within=5)

    assert len(_lines((tmp_path / ".spool" / "w" / "w@s" / "00000000.seg").read_bytes())) == 10
    assert store.read_session("s") == {}  # the segment is not finished yet: the store only gets whole segments
    await rec.close()
    await store.close()


class FlakyStore:
    """Delegates to a real FileStore, but refuses segments (like S3 being down) while ``down`` is set."""

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner
        self.root = inner.root
        self.down = True
        self.attempts = 0

    async def put_segment(self, segment: Segment) -> None:
        self.attempts += 1
        if self.down:
            raise StoreError(f"cannot upload segment {segment.number}: connection refused")
        await self.inner.put_segment(segment)

    async def close(self) -> None:
        await self.inner.close()

    def list_sessions(self) -> list[str]:
        return self.inner.list_sessions()

    def read_session(self, session: str) -> dict[str, StreamData]:
        return self.inner.read_session(session)


async def test_store_down_spool_holds_everything_and_ships_it_once_it_recovers(tmp_path: Path) -> None:
    store = FlakyStore(FileStore(tmp_path))
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=0.01, segment_age=0.01))
    rec.uploader.backoff = 0.001
    await rec.start()
    for e in _events("s", 3):
        rec.emit(e)

    await wait_for(lambda: store.attempts >= 2 and rec.uploader.failing)
    assert rec.accepting  # the spool has room: traffic goes on while the store is down
    for e in _events("s", 3, t0=2000.0):
        assert rec.emit(e)
    await wait_for(lambda: rec.written_events == 6)
    assert store.read_session("s") == {}
    assert rec.spool.size > 0

    store.down = False
    await wait_for(lambda: not rec.uploader.failing and not rec.spool.ready)
    await rec.close()

    events, problems = verify_stream("w", store.read_session("s")["w"].data)
    assert problems == []
    assert [e["time"] for e in events] == [1000.0, 1001.0, 1002.0, 2000.0, 2001.0, 2002.0]  # nothing lost or doubled
    assert load_session(store, "s").problems == []
    assert rec.lost_events == 0
    assert not (tmp_path / ".spool" / "w").exists()  # shipped, then deleted from the spool


async def test_store_down_is_retried_with_backoff_not_in_a_tight_loop(tmp_path: Path) -> None:
    store = FlakyStore(FileStore(tmp_path))
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=0.01, segment_age=0.01))
    rec.uploader.backoff = 0.02
    rec.uploader._rand = lambda: 1.0  # the jitter's ceiling: 0.04, 0.08, 0.16 s
    await rec.start()
    rec.emit(_events("s", 1)[0])
    await wait_for(lambda: store.attempts >= 1)
    started = time.monotonic()

    await wait_for(lambda: store.attempts >= 4)

    assert time.monotonic() - started >= 0.2  # three retries back off exponentially; a busy loop makes thousands
    store.down = False
    await rec.close()


async def test_spool_full_stops_accepting_until_the_store_drains_it(tmp_path: Path) -> None:
    store = FlakyStore(FileStore(tmp_path))
    rec = Recorder(store, Spool.beside(store, "w", 2000), RecorderOptions(flush_interval=0.01, segment_age=0.01))
    rec.uploader.backoff = 0.001
    await rec.start()
    sent = 0
    for e in _events("s", 30):  # one at a time, as exchanges would while admitted
        rec.emit(e)
        sent += 1
        await wait_for(lambda: rec.written_events == sent or not rec.accepting)  # noqa: B023
        if not rec.accepting:
            break

    assert sent < 30
    assert rec.spool.size <= 2000 + 200  # past the bound by the last admitted event's line at most
    store.down = False
    await wait_for(lambda: rec.accepting and rec.written_events == sent)
    await rec.close()

    events, problems = verify_stream("w", store.read_session("s")["w"].data)
    assert problems == [] and len(events) == sent  # the events of admitted exchanges waited in memory, none lost


async def test_spool_full_with_recording_optional_drops_and_counts(tmp_path: Path) -> None:
    store = FlakyStore(FileStore(tmp_path))
    rec = Recorder(
        store, Spool.beside(store, "w", 2000), RecorderOptions(flush_interval=0.01, segment_age=0.01, required=False)
    )
    rec.uploader.backoff = 0.001
    await rec.start()
    for n, e in enumerate(_events("s", 30), start=1):
        rec.emit(e)
        await wait_for(lambda: rec.written_events + rec.lost_events == n)  # noqa: B023

    store.down = False
    await rec.close()

    assert rec.lost_events > 0
    session = load_session(store, "s")
    assert session.problems == []  # what was kept still verifies: dropped events were never chained
    assert len(session.events) == 30 - rec.lost_events


async def test_file_store_under_a_regular_file_fails_then_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file, not a directory")
    store = FileStore(blocker / "recordings")
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=0.01))
    await rec.start()
    for e in _events("s", 4):
        rec.emit(e)

    await wait_for(lambda: not rec.healthy)
    assert rec.written_events == 0

    blocker.unlink()  # the operator fixes the disk
    await wait_for(lambda: rec.healthy and rec.written_events == 4)
    await rec.close()
    await store.close()

    events, problems = verify_stream("w", (blocker / "recordings" / "s" / "w.jsonl").read_bytes())
    assert problems == []
    assert [e["index"] for e in events] == [0, 1, 2, 3]


async def test_written_returns_once_the_events_are_in_the_spool_file_without_waiting_the_linger(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path)
    rec = Recorder(
        store, Spool.beside(store, "w"), RecorderOptions(flush_interval=5.0, linger=5.0)
    )  # a round would linger 5 s
    await rec.start()
    for e in _events("s", 3):
        rec.emit(e)
    t0 = time.monotonic()
    await rec.written()
    took = time.monotonic() - t0

    segment = next((tmp_path / ".spool").rglob("*.seg"))
    lines = _lines(segment.read_bytes())  # in the file now: a kill -9 of the processor can no longer lose them
    assert [line["seq"] for line in lines] == [0, 1, 2]
    assert took < 2.0  # the commit point cut the linger short
    await rec.written()  # nothing new: returns at once
    await rec.close()


async def test_written_fails_at_once_while_the_spool_is_failing(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rec = Recorder(FileStore(tmp_path / "store"), Spool(blocker / "spool", "w"), RecorderOptions(flush_interval=0.01))
    await rec.start()  # the spool cannot be opened: unhealthy
    rec.emit(_events("s", 1)[0])
    t0 = time.monotonic()
    with pytest.raises(StoreError):
        await rec.written()
    assert time.monotonic() - t0 < 1.0
    await rec.close()


async def test_a_full_spool_refuses_new_work_but_writes_and_seals_what_was_admitted(tmp_path: Path) -> None:
    # Each event waits at its commit point, as an exchange does. The line that passes the bound must still be
    # written: refused, it would hold back its segment's seal, and the spool could never drain (it used to hang).
    store = FlakyStore(FileStore(tmp_path))
    rec = Recorder(store, Spool.beside(store, "w", 2000), RecorderOptions(flush_interval=0.01, segment_age=0.01))
    rec.uploader.backoff = 0.001
    await rec.start()
    sent = 0
    for e in _events("s", 60):
        rec.emit(e)
        sent += 1
        await rec.written(within=2.0)
        if not rec.accepting:  # new exchanges are refused from here on
            break
    assert sent < 60
    store.down = False
    await wait_for(lambda: rec.accepting)  # the store took the sealed segments: room again
    rec.emit(_events("s", 1, exchange="after")[0])
    await rec.written(within=5.0)
    await rec.close()
    events, problems = verify_stream("w", store.read_session("s")["w"].data)
    assert problems == [] and len(events) == sent + 1
