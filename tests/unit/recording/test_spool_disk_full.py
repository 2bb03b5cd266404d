"""A disk that fills up in the middle of an append must not leave a torn line in the spool.

Found by the fault suite (bench/faults/disk_full.py): with the spool on a full tmpfs, part of a batch of lines
reached the file, the recorder appended the whole batch again once space returned, and the stream's hash chain
broke (a line of invalid JSON, sequence gaps, a segment that differs from its signed manifest).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from extproc.metrics import _Readings
from extproc.recording import digest
from extproc.recording.events import McpRequest
from extproc.recording.recorder import Recorder
from extproc.recording.spool import Spool
from extproc.recording.spool_files import Append
from extproc.recording.store.file import FileStore
from extproc.recording.writer import RecorderOptions


class FillsUp:
    """A spool file handle on a disk that takes ``room`` more bytes, then says ENOSPC."""

    def __init__(self, f: Any, room: int) -> None:
        self.f, self.room = f, room

    def fileno(self) -> int:
        return self.f.fileno()

    def write(self, data: bytes) -> int:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        n = self.f.write(bytes(data)[: self.room])
        self.room -= n
        return n

    def flush(self) -> None:
        self.f.flush()

    def close(self) -> None:
        self.f.close()


async def test_a_failed_append_leaves_no_partial_line_and_the_retry_lands_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", "w1")
    first = Append("s1", "w1", 0, b'{"seq":0}\n')
    batch = Append("s1", "w1", 0, b'{"seq":1,"text":"a fairly long line"}\n{"seq":2}\n')
    assert await spool.write_behind([first]) == (1, None)
    path = next((tmp_path / "spool" / "w1").rglob("00000000.seg"))
    key = ("s1", "w1", 0)
    real = spool._handles[key]
    spool._handles[key] = FillsUp(real, room=12)  # the disk fills up 12 bytes into the batch

    done, error = await spool.write_behind([batch])
    assert done == 0 and error is not None and "No space left" in str(error)
    assert path.read_bytes() == first.data  # the 12 bytes that fit were taken back

    assert await spool.write_behind([batch]) == (1, None)  # space returned: the recorder appends the batch again
    assert path.read_bytes() == first.data + batch.data
    await spool.close()


class FullDisk:
    """The spool's appends on a disk that is full while ``full`` (ENOSPC before a byte is taken)."""

    def __init__(self, spool: Spool) -> None:
        self.append, self.full, self.refused = spool._append, True, 0
        spool._append = self  # type: ignore[method-assign]

    def __call__(self, key: Any, data: bytes, retiring: Any = None) -> None:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self.append(key, data, retiring)


async def _until(check: Callable[[], bool], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)  # yield to the recorder's loop; the condition, not the time, ends the wait


async def test_a_full_disk_is_named_once_in_the_log_the_metric_and_recorder_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool_dir = tmp_path / "spool"
    rec = Recorder(FileStore(tmp_path / "store"), Spool(spool_dir, "w"), RecorderOptions(flush_interval=0.01))
    await rec.start()
    disk = FullDisk(rec.spool)
    caplog.set_level(logging.INFO)
    assert rec.unavailable() is None and rec.stats().unavailable == ""

    rec.emit(McpRequest(session="s", exchange="ex1", index=0, time=1000.0))
    await _until(lambda: not rec.healthy and disk.refused >= 3)  # retried several times, still full
    reason, detail = rec.unavailable() or ("", "")
    assert reason == "disk_full" and "ENOSPC" in detail and str(spool_dir) in detail
    assert not rec.accepting and rec.stats().unavailable == "disk_full"
    gauge = {s.labels["reason"]: s.value for m in _Readings(rec, None, None).collect() for s in m.samples
             if m.name == "mcp_extproc_recording_unavailable"}  # fmt: skip
    assert gauge == {"disk_full": 1.0, "spool_unwritable": 0.0, "spool_full": 0.0, "store_refusing": 0.0}

    disk.full = False  # space returns
    await _until(lambda: rec.healthy and rec.written_events == 1)
    assert rec.unavailable() is None and rec.stats().unavailable == ""
    await rec.close()
    entering = [r for r in caplog.records if "recording unavailable (disk_full)" in r.getMessage()]
    leaving = [r for r in caplog.records if "recording available again" in r.getMessage()]
    assert len(entering) == 1 and len(leaving) == 1  # once per state change, however many retries failed
    assert "ENOSPC" in entering[0].getMessage() and str(spool_dir) in entering[0].getMessage()
    assert entering[0].levelno == logging.ERROR


async def test_a_spool_that_refuses_writes_otherwise_is_named_by_its_errno(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rec = Recorder(FileStore(tmp_path / "store"), Spool(blocker / "spool", "w"), RecorderOptions(flush_interval=0.01))
    await rec.start()
    reason, detail = rec.unavailable() or ("", "")
    assert reason == "spool_unwritable" and "ENOTDIR" in detail and str(blocker) in detail
    await rec.close()


def test_a_full_disk_under_the_digest_journal_does_not_stop_the_uploader(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The uploader writes a journal line per stored segment; ENOSPC there used to end the uploader's task, so the
    spool never drained and the disk stayed full after space returned (bench/faults/disk_full.py)."""
    full = Path("/dev/full")  # every write: ENOSPC
    for _ in range(3):
        digest._append(full, b'{"segment":1}\n')  # no exception: the uploader goes on
    journal = tmp_path / "period.jsonl"
    digest._append(journal, b'{"segment":2}\n')
    assert journal.read_bytes() == b'{"segment":2}\n'
    failed = [r for r in caplog.records if "line not written" in r.getMessage()]
    assert len(failed) == 1 and "ENOSPC" in failed[0].getMessage()  # once per state change
    assert any("writable again" in r.getMessage() for r in caplog.records)
