"""A disk that fills up in the middle of an append must not leave a torn line in the spool.

Found by the fault suite (bench/faults/disk_full.py): with the spool on a full tmpfs, part of a batch of lines
reached the file, the recorder appended the whole batch again once space returned, and the stream's hash chain
broke (a line of invalid JSON, sequence gaps, a segment that differs from its signed manifest).
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Any

from extproc.recording.spool import Append, Spool


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
