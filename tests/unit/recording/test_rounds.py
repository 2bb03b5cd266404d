"""The writer is woken once per round, not per event: events emitted close together share one spool write."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from extproc.recording.events import ExchangeEnd, ExchangeStart, McpRequest
from extproc.recording.recorder import Recorder
from extproc.recording.replay import load_session
from extproc.recording.spool import Spool
from extproc.recording.store.file import FileStore
from extproc.recording.writer import RecorderOptions


class CountingSpool(Spool):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.writes: list[int] = []

    async def write_behind(self, ops: list) -> Any:
        self.writes.append(len(ops))
        return await super().write_behind(ops)


async def test_a_burst_of_exchanges_is_one_round(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    spool = CountingSpool(tmp_path / ".spool", "w")
    rec = Recorder(store, spool, RecorderOptions(flush_interval=0.05, linger=0.02, segment_age=60))
    await rec.start()
    for n in range(50):  # 50 exchanges of 5 sessions, emitted as the event loop's callbacks would
        sid, ex = f"s{n % 5}", f"e{n}"
        rec.emit(ExchangeStart(session=sid, exchange=ex, index=0, method="POST"))
        rec.emit(McpRequest(session=sid, exchange=ex, index=1, messages=[{"id": n}]))
        rec.emit(ExchangeEnd(session=sid, exchange=ex, index=2))

    await rec.flushed()

    assert spool.writes[0] >= 5  # one write for all 150 events (appends of 5 streams plus their seals)
    assert len(spool.writes) <= 2
    assert rec.written_events == 150
    await rec.close()
    for n in range(5):
        session = load_session(store, f"s{n}")
        assert session.problems == [] and len(session.events) == 30


async def test_close_drains_more_than_a_round(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(queue_size=20_000, flush_interval=60))
    await rec.start()
    for n in range(10_000):
        assert rec.emit(McpRequest(session="s", exchange="e", index=n))

    await rec.close()

    assert rec.written_events == 10_000 and rec.lost_events == 0
    assert [e["index"] for e in load_session(store, "s").events] == list(range(10_000))


async def test_seals_across_many_busy_sessions_keep_to_the_budget_oldest_first(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    rec = Recorder(
        store,
        Spool.beside(store, "w"),
        RecorderOptions(flush_interval=0.01, seal_interval=0.01, seal_rate=5, segment_age=60),
    )
    sealed: list[str] = []
    seal = rec.streams.seal

    def counting(st: Any, final: bool) -> None:
        if not final:
            sealed.append(st.session)
        seal(st, final)

    rec.streams.seal = counting  # type: ignore[method-assign]
    await rec.start()
    for n in range(20):  # 20 sessions, an exchange of each just ended: 20 seals due at once
        rec.emit(ExchangeStart(session=f"s{n:02d}", exchange=f"e{n}", index=0, time=float(n)))
        rec.emit(ExchangeEnd(session=f"s{n:02d}", exchange=f"e{n}", index=1, time=float(n)))
        await asyncio.sleep(0.002)  # each session's segment opens a little later than the one before
    await asyncio.sleep(0.3)
    early = list(sealed)
    await asyncio.sleep(4.0)
    await rec.close()

    assert 5 <= len(early) <= 8  # the burst of 5, then 5 a second; not 20 at once
    assert early[:5] == sorted(early[:5]) and early[0] == "s00"  # oldest segments first
    assert len(set(sealed)) == 20  # every due segment was sealed in the end, none skipped


class CountingRounds(Recorder):
    rounds = 0

    async def _next_round(self, wake_after: float | None) -> None:
        await super()._next_round(wake_after)
        self.rounds += 1  # the writer's rounds (the commit points' inline writes do not come here)


async def test_at_a_low_rate_commit_points_cost_the_writer_one_round_per_flush_interval(tmp_path: Path) -> None:
    # Exchanges 20 ms apart, each writing its events at its commit points: the writer comes once per flush interval
    # (for the fsync), not once per exchange (a linger timer and a round each, an fsync hop for most).
    store = FileStore(tmp_path)
    rec = CountingRounds(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=1.0, segment_age=60))
    await rec.start()
    for e in [ExchangeStart(session="s", exchange="e0", index=0, method="POST")]:  # the stream's folder exists
        rec.emit(e)
    await rec.flushed()
    before = rec.rounds
    for n in range(1, 6):
        rec.emit(ExchangeStart(session="s", exchange=f"e{n}", index=0, method="POST"))
        await rec.written()
        rec.emit(ExchangeEnd(session="s", exchange=f"e{n}", index=1))
        await rec.written()
        await asyncio.sleep(0.02)
    assert rec.inline_commits == 10
    assert rec.rounds - before <= 1  # within the second: at most the round that comes for the interval's fsync
    await rec.close()
    assert len(load_session(store, "s").events) == 11
