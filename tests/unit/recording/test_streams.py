"""The recorder's streams, without a spool or an event loop: chaining, cuts and seals, and what goes to the spool."""

from __future__ import annotations

import hashlib
import json

from extproc.recording.events import ExchangeEnd, ExchangeStart, McpRequest
from extproc.recording.manifest import GENESIS, Signer
from extproc.recording.spool_files import Append, Unfinished
from extproc.recording.streams import Streams


def _streams(now: list[float], **kw: float) -> Streams:
    opts = {"segment_bytes": 1 << 20, "segment_age": 60.0, "seal_interval": 0.2, "seal_rate": 100.0}
    opts.update(kw)
    return Streams("w", Signer(None), idle_timeout=30.0, clock=lambda: now[0], wall_clock=lambda: 1e9, **opts)


def test_an_exchange_is_chained_sealed_at_its_end_and_handed_over_in_order() -> None:
    now = [100.0]
    streams = _streams(now)
    events = [
        ExchangeStart(session="s", exchange="e", index=0, time=1.0),
        McpRequest(session="s", exchange="e", index=1, time=2.0),
        ExchangeEnd(session="s", exchange="e", index=2, time=3.0),
    ]
    ended, dropped = streams.chain(events)
    assert dropped == [] and [st.session for st in ended] == ["s"]
    assert streams.cut(ended, stopping=False)  # the first round scans everything
    batch, owners = streams.batch()
    assert [type(op) for op in batch] == [Append, Unfinished]
    lines = batch[0].data.splitlines()  # type: ignore[union-attr]
    assert [json.loads(line)["seq"] for line in lines] == [0, 1, 2]
    assert json.loads(lines[0])["prev"] == GENESIS
    assert json.loads(lines[1])["prev"] == hashlib.sha256(lines[0]).hexdigest()
    seal = batch[1]
    assert isinstance(seal, Unfinished)
    manifest = seal.manifest  # its hash, link and signature are done behind the data path, from the file
    assert (manifest.first, manifest.last, manifest.head, manifest.open) == (
        0,
        2,
        hashlib.sha256(lines[2]).hexdigest(),
        [],
    )
    assert streams.has_lines
    assert streams.spooled(batch, owners, done=1) == 3  # the append went in, the seal did not: it stays pending
    assert not streams.has_lines and streams.pending
    streams.spooled(*streams.batch(), done=1)
    assert not streams.pending


def test_no_room_drops_the_event_before_it_is_chained() -> None:
    now = [100.0]
    streams = _streams(now)
    ended, dropped = streams.chain([McpRequest(session="s", exchange="e", index=0, time=1.0)], room=lambda _: False)
    assert ended == [] and len(dropped) == 1 and not streams.has_lines
    assert streams.open["s"].seq == 0  # the chain did not move: what is kept still verifies


def test_a_round_without_an_ended_exchange_does_not_scan_every_stream() -> None:
    now = [100.0]
    streams = _streams(now, segment_age=1.0)
    for n in range(50):
        streams.chain([McpRequest(session=f"s{n}", exchange="e", index=0, time=1.0)])
    assert streams.cut([], stopping=False)  # first round: a full scan
    now[0] += 1.05  # every segment is now older than segment_age
    assert streams.cut([], stopping=False) is True  # the scan interval has passed: aged segments are sealed
    sealed = sum(isinstance(op, Unfinished) for st in streams.pending.values() for op in st.ops)
    assert sealed == 50
    now[0] += 0.01
    assert streams.cut([], stopping=False) is False  # within the scan interval only ended streams are looked at


def _sealed(streams: Streams) -> list[str]:
    return sorted(st.session for st in streams.pending.values() for op in st.ops if isinstance(op, Unfinished))


def test_seals_after_exchange_ends_wait_for_the_tick_and_share_it() -> None:
    now = [100.0]
    streams = _streams(now)  # seal interval 0.2 s: the tick
    assert streams.cut([], stopping=False)  # the first round is a tick
    for n, session in enumerate(["a", "b", "c"]):  # three exchanges end between two ticks
        now[0] += 0.05
        ex = f"e{n}"
        start, end = ExchangeStart(session=session, exchange=ex), ExchangeEnd(session=session, exchange=ex, index=1)
        ended, _ = streams.chain([start, end])
        assert streams.cut(ended, stopping=False) is False
        assert _sealed(streams) == []  # not sealed at the exchange's end: the spool holds its lines already
    assert 0 < streams.next_tick() <= 0.2
    now[0] += 0.06  # the tick
    assert streams.cut([], stopping=False)
    assert _sealed(streams) == ["a", "b", "c"]  # every due stream on the same tick: one batch of disk work


def test_a_segment_that_would_pass_its_age_before_the_next_tick_is_sealed_on_this_one() -> None:
    now = [100.0]
    streams = _streams(now, segment_age=1.0)
    streams.chain([McpRequest(session="s", exchange="e", index=0)])  # no exchange ends: only the age seals it
    assert streams.cut([], stopping=False) and _sealed(streams) == []
    now[0] += 0.81  # 0.19 s before its maximum age: the next tick would be late
    assert streams.cut([], stopping=False)
    assert _sealed(streams) == ["s"]


def test_ended_sessions_are_remembered_within_a_bound_and_no_stream_name_is_reused() -> None:
    now = [100.0]
    streams = _streams(now)
    streams.max_ended = 4  # (default MAX_ENDED)
    names: list[tuple[str, str]] = []
    for rnd in range(3):  # 30 sessions, each ended and later reopened by a late exchange
        for i in range(10):
            s, ex = f"s{i}", f"e{rnd}-{i}"
            names.append((s, streams._stream(s).writer))
            ended, _ = streams.chain(
                [ExchangeStart(session=s, exchange=ex), ExchangeEnd(session=s, exchange=ex, ends_session=True)]
            )
            streams.cut(ended, stopping=False)
            assert s not in streams.open  # the stream ended with its session
    assert len(streams._epochs) <= 4  # unbounded before: one entry per session this writer ever ended
    assert len(set(names)) == len(names)  # a late exchange never writes into a stream that has ended
    assert [w for _, w in names[:4]] == ["w"] * 4  # the first generation keeps today's names
    assert next(w for s, w in names if s == "s9") == "w.g2"  # a new generation: its own names for every session
