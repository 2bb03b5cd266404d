"""Seals and fsyncs run behind the data path: a commit point waits for appends only, never for a seal's fsyncs."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import io
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from recording_helpers import exchange_events

from extproc.recording.events import McpRequest
from extproc.recording.manifest import Manifest, Signer
from extproc.recording.recorder import Recorder
from extproc.recording.replay import load_session
from extproc.recording.spool import Spool
from extproc.recording.spool_files import Append, Sealing, Unfinished, stream_folder
from extproc.recording.store.file import FileStore
from extproc.recording.writer import RecorderOptions


class GatedSpool(Spool):
    """A spool whose seals (fsync of the data, the manifest) block until ``gate`` is set, like a slow disk."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = threading.Event()
        self.fail = False
        self.finished: list[int] = []

    def _seal_all(self, items: list[Sealing]) -> None:
        if not self.gate.wait(10):
            raise TimeoutError("gate never opened")
        if self.fail:
            raise OSError(28, "No space left on device")
        super()._seal_all(items)
        self.finished.extend(it.seal.manifest.segment for it in items)


async def test_a_commit_point_does_not_wait_for_a_seal(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    spool = GatedSpool(tmp_path / ".spool", "w")
    # Tiny segments: every exchange fills one, so each commit point comes with a seal of the segment before.
    rec = Recorder(store, spool, RecorderOptions(segment_bytes=1024, flush_interval=0.01, segment_age=60))
    await rec.start()
    for n in range(5):
        for e in exchange_events("s", n):
            assert rec.emit(e)
        t0 = time.monotonic()
        await rec.written(within=2.0)  # returns although no seal can finish (the gate is shut)
        assert time.monotonic() - t0 < 1.0

    folder = tmp_path / ".spool" / "w" / stream_folder("s", "w")
    assert len(list(folder.glob("*.seg"))) >= 2  # later segments were appended while earlier seals waited
    assert spool.finished == [] and not spool.ready
    stats = rec.stats()  # what metrics show operators: the seals are not ready segments yet, but they are waiting
    assert stats.segments_waiting == 0 and stats.disk_jobs_waiting >= 1
    spool.gate.set()
    await rec.flushed()
    assert rec.stats().disk_jobs_waiting == 0
    assert spool.finished == sorted(spool.finished) and len(spool.finished) >= 2  # in order, once the disk lets them
    await rec.close()
    session = load_session(store, "s")
    assert session.problems == [] and len(session.events) == 15


async def test_a_failing_seal_makes_the_recorder_unhealthy_until_it_is_retried_successfully(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    spool = GatedSpool(tmp_path / ".spool", "w")
    spool.behind.retry = 0.02
    spool.fail = True
    spool.gate.set()
    rec = Recorder(store, spool, RecorderOptions(segment_bytes=1024, flush_interval=0.01, segment_age=60))
    await rec.start()
    for e in exchange_events("s", 0) + exchange_events("s", 1):
        rec.emit(e)
    await rec.written(within=2.0)
    deadline = time.monotonic() + 5
    while rec.healthy or rec.accepting:  # the disk refuses the manifest: new exchanges are refused (fail closed)
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)

    spool.fail = False  # the disk takes writes again: the queued seal is retried, in order
    while not rec.healthy:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert rec.spool.behind.failure is None
    await rec.close()
    session = load_session(store, "s")
    assert session.problems == [] and len(session.events) == 6


async def test_seals_and_fsyncs_queued_together_share_one_thread_hop(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "w")
    await spool.open()
    ops: list[Append | Unfinished] = []
    link = ["0" * 64]
    for n in range(4):
        ops.append(Append("s", "w", n, b"%d\n" % n))
        ops.append(Unfinished(Manifest("s", "w", n, n, n, 1, 2, "", "y" * 64, "", created=1.0), link, Signer(None)))
    ops.append(Append("s", "w", 4, b"4\n"))

    assert await spool.write_behind(ops) == (len(ops), None)
    spool.sync_behind()
    assert await spool.behind.settled() is None

    assert spool.behind.batches == 1  # four seals and the fsync: one hop
    assert [r.number for r in spool.ready] == [0, 1, 2, 3]
    assert spool.size == 10
    prev = "0" * 64
    for n in range(4):  # each manifest: the SHA-256 of its segment file, linked to the one before, in order
        raw = (tmp_path / "w" / stream_folder("s", "w") / f"{n:08d}.manifest").read_bytes()
        manifest = Manifest.from_bytes(raw)
        assert manifest.sha256 == hashlib.sha256(b"%d\n" % n).hexdigest() and manifest.prev_manifest == prev
        prev = hashlib.sha256(raw).hexdigest()
    await spool.close(remove_if_empty=False)


async def test_a_writer_killed_while_seals_wait_behind_loses_nothing_it_wrote(tmp_path: Path) -> None:
    # Appends run ahead of the seals: a kill can leave several segment files after the last manifest. The completer
    # seals each of them, in order, and every event a commit point waited for is in the store.
    from extproc.recording.completer import Completer
    from extproc.recording.manifest import generate_keys

    key, _ = generate_keys(tmp_path / "keys")
    signer = Signer.from_file(key)
    root = tmp_path / "rec"
    store = FileStore(root)
    spool = GatedSpool(root / ".spool", "dead")
    spool.gate.set()
    dead = Recorder(store, spool, RecorderOptions(segment_bytes=1024, flush_interval=0.01), signer=signer)
    await dead.start()
    sent = 0
    for n in range(12):
        for e in exchange_events("s", n):
            if isinstance(e, McpRequest):
                e.messages = [{"id": n, "pad": "x" * 200}]
            assert dead.emit(e)
            sent += 1
        await dead.written(within=2.0)
        if n == 3:  # from here on the disk stalls: seals wait behind, appends go on
            await dead.flushed()
            spool.gate.clear()
    assert len(spool.finished) >= 1 and len(list((root / ".spool" / "dead").rglob("*.seg"))) >= 3

    spool.fail = True  # the process dies: no seal queued behind is ever finished
    assert dead._task is not None and spool._lock is not None
    dead._task.cancel()
    await dead.uploader.stop()  # its uploader dies with it (it would ship, and delete, what the completer adopts)
    spool._lock.close()  # the kernel drops the flock of a killed process
    spool.gate.set()
    await spool.behind.stop()
    for obj in gc.get_objects():  # the kernel closes a killed process's files: its seal jobs never will
        if isinstance(obj, io.IOBase) and not obj.closed and str(root) in str(getattr(obj, "name", "")):
            obj.close()

    live = Recorder(store, Spool.beside(store, "live"), RecorderOptions(flush_interval=0.01), signer=signer)
    await live.start()
    completer = Completer(root / ".spool", store, live, signer)
    assert await completer.run_once() == 1
    await completer.stop()
    await live.close()

    session = load_session(store, "s")
    assert session.problems == []
    recorded = [e for e in session.events if e["type"] != "exchange.incomplete"]
    assert len(recorded) == sent  # every event a commit point waited for
    manifests = [Manifest.from_bytes(m) for m in store.read_session("s")["dead"].manifests]
    assert [m.segment for m in manifests] == list(range(len(manifests))) and manifests[-1].final
    assert [m.final for m in manifests[:-1]] == [False] * (len(manifests) - 1)


async def test_close_waits_for_the_seals_behind_while_they_keep_moving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A busy disk or CPU can leave thousands of seals queued at shutdown: close waits as long as they move (a fixed
    # 10 s left them to a completer that a stopping gateway never runs, and the store missed what they sealed).
    from extproc.recording import writer as recorder_mod
    from extproc.recording.behind import Job

    monkeypatch.setattr(recorder_mod, "SETTLE_STEP_S", 0.1)
    store = FileStore(tmp_path / "rec")
    spool = Spool.beside(store, "w")
    rec = Recorder(store, spool, RecorderOptions(flush_interval=0.01))
    await rec.start()
    done: list[int] = []

    def chain(n: int) -> None:  # each job queues the next when it is done: one at a time, 30 ms each
        done.append(n)
        if n < 19:
            spool.behind.put(Job(lambda: time.sleep(0.03), lambda: chain(n + 1), "slow seal"))

    spool.behind.put(Job(lambda: time.sleep(0.03), lambda: chain(0), "slow seal"))
    await rec.close()
    assert done == list(range(20))


async def test_a_batch_of_seals_failing_half_way_is_retried_with_the_same_links(tmp_path: Path) -> None:
    # Three seals of one stream in one job; the second manifest cannot be renamed into place (a non-empty folder
    # holds its name, as a disk refusing a write would). The first is in place; the retry keeps it and links the
    # others to it, exactly as one uninterrupted batch would have.
    spool = Spool(tmp_path, "w")
    spool.behind.retry = 0.01
    await spool.open()
    link = ["0" * 64]
    ops: list[Append | Unfinished] = []
    for n in range(3):
        ops.append(Append("s", "w", n, b"%d\n" % n))
        ops.append(Unfinished(Manifest("s", "w", n, n, n, 1, 2, "", "y" * 64, "", created=1.0), link, Signer(None)))
    folder = tmp_path / "w" / stream_folder("s", "w")
    blocker = folder / "00000001.manifest"
    (blocker / "x").mkdir(parents=True)

    assert await spool.write_behind(ops) == (len(ops), None)
    deadline = time.monotonic() + 5
    while spool.behind.failure is None:  # the job fails at the second rename and waits for its retry
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)
    assert (folder / "00000000.manifest").exists() and not spool.ready
    (blocker / "x").rmdir()
    blocker.rmdir()
    while spool.behind.failure is not None or spool.behind.pending:  # retried every 10 ms: now it goes through
        assert time.monotonic() < deadline
        await asyncio.sleep(0.005)

    assert [r.number for r in spool.ready] == [0, 1, 2]
    prev = "0" * 64
    for n in range(3):
        raw = (folder / f"{n:08d}.manifest").read_bytes()
        assert Manifest.from_bytes(raw).prev_manifest == prev
        prev = hashlib.sha256(raw).hexdigest()
    assert link == [prev] and not list(folder.glob("*.tmp"))
    await spool.close(remove_if_empty=False)


@pytest.mark.parametrize(
    ("appends", "synced_after", "seg_fsyncs"),
    [
        pytest.param(1, 1, 1, id="fsynced-then-sealed: the seal owes none"),
        pytest.param(1, 0, 1, id="never-fsynced: the seal fsyncs it"),
        pytest.param(2, 1, 2, id="written-after-the-fsync: the seal fsyncs it again"),
    ],
)
async def test_a_seal_fsyncs_its_segment_file_exactly_when_it_was_written_since_the_last_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, appends: int, synced_after: int, seg_fsyncs: int
) -> None:
    import os

    real, inodes = os.fsync, []

    def counting(fd: int) -> None:  # the real fsync, noting which file it was for
        inodes.append(os.fstat(fd).st_ino)
        real(fd)

    spool = Spool(tmp_path, "w")
    await spool.open()
    monkeypatch.setattr(os, "fsync", counting)
    link = ["0" * 64]
    for n in range(appends):
        assert await spool.write_behind([Append("s", "w", 0, b"%d\n" % n)]) == (1, None)
        if n < synced_after:
            spool.sync_behind()
    size = 2 * appends
    manifest = Manifest("s", "w", 0, 0, appends - 1, appends, size, "", "y" * 64, "", created=1.0)
    assert await spool.write_behind([Unfinished(manifest, link, Signer(None))]) == (1, None)
    assert await spool.behind.settled() is None

    seg = (tmp_path / "w" / stream_folder("s", "w") / "00000000.seg").stat().st_ino
    assert inodes.count(seg) == seg_fsyncs
    await spool.close(remove_if_empty=False)
