"""Commit points written at once: when nothing needs a thread hop, ``Recorder.written`` chains and appends the queued
events itself, instead of waiting for the writer's task (no future, no timer, no extra turn of the event loop)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from recording_helpers import exchange_events

from extproc.recording.recorder import Recorder
from extproc.recording.replay import load_session
from extproc.recording.spool import Spool
from extproc.recording.spool_files import stream_folder
from extproc.recording.store.file import FileStore
from extproc.recording.writer import RecorderOptions


def _seqs(folder: Path) -> list[int]:
    return [json.loads(line)["seq"] for p in sorted(folder.glob("*.seg")) for line in p.read_bytes().splitlines()]


async def test_a_commit_on_a_known_stream_is_written_without_the_writer(tmp_path: Path) -> None:
    # The writer lingers 5 s and syncs every 5 s: a commit that waited for its round would take seconds.
    store = FileStore(tmp_path)
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=5.0, linger=5.0, segment_age=60))
    await rec.start()
    for e in exchange_events("s", 0):
        rec.emit(e)
    await rec.written()  # a new stream: its folder takes the writer's thread hop
    assert rec.inline_commits == 0
    folder = tmp_path / ".spool" / "w" / stream_folder("s", "w")

    for n in range(1, 4):
        for e in exchange_events("s", n):
            rec.emit(e)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await rec.written()
        assert loop.time() - t0 < 0.5
        assert _seqs(folder) == list(range(3 * (n + 1)))  # in the file when written() returns
    assert rec.inline_commits == 3
    await rec.close()
    session = load_session(FileStore(tmp_path), "s")
    assert [e["exchange"] for e in session.events if e["type"] == "exchange.end"] == ["e0", "e1", "e2", "e3"]


async def test_what_a_commit_wrote_is_fsynced_within_the_flush_interval(tmp_path: Path, monkeypatch: Any) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store = FileStore(tmp_path)
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=0.2, linger=0.0, segment_age=60))
    await rec.start()
    for e in exchange_events("s", 0):
        rec.emit(e)
    await rec.written()
    await asyncio.sleep(0.5)  # the first exchange's round and its fsync are done
    synced.clear()
    for e in exchange_events("s", 1):
        rec.emit(e)
    await rec.written()
    assert rec.inline_commits == 1
    await asyncio.sleep(0.6)  # no other event: only the inline write can have asked for this fsync
    assert synced, "the segment file written at the commit point was never fsynced"
    await rec.close()


async def test_a_commit_while_the_writer_is_in_a_round_waits_for_that_round(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=0.05, linger=0.0, segment_age=60))
    await rec.start()
    for e in exchange_events("s", 0):
        rec.emit(e)
    await rec.written()
    rec._in_round = True  # as when the writer awaits a thread with a batch in hand
    for e in exchange_events("s", 1):
        rec.emit(e)
    assert rec._write_now() is False  # never beside a round: its batch is not in the file yet
    assert rec.inline_commits == 0
    rec._in_round = False
    await rec.written()
    await rec.close()
    assert [e["seq"] for e in load_session(FileStore(tmp_path), "s").events] == list(range(6))
