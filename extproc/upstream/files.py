"""A secret in a file (a mounted Kubernetes Secret), re-read when it changes; looked at most once per interval."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

MAX_SECRET_BYTES = 64 << 10


class WatchedFile:
    """The file's content, stripped. A stat per ``interval`` (O(1) per request); re-read when inode, size or mtime
    changed (a Secret update swaps the ``..data`` symlink: a new inode). An unreadable or empty file raises
    ``OSError``/``ValueError``: the caller refuses the request rather than send a stale or empty credential."""

    def __init__(self, path: Path, clock: Callable[[], float], interval: float = 1.0) -> None:
        self.path = path
        self._clock = clock
        self._interval = interval
        self._checked = float("-inf")
        self._stamp: tuple[int, int, int] | None = None
        self._value = ""
        self.reads = 0

    def value(self) -> str:
        now = self._clock()
        if now - self._checked >= self._interval or self._stamp is None:
            st = os.stat(self.path)  # follows symlinks: the Secret's current version
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            if stamp != self._stamp:
                self._value = self._read()
                self._stamp = stamp
            self._checked = now
        return self._value

    def _read(self) -> str:
        with open(self.path, "rb") as f:
            data = f.read(MAX_SECRET_BYTES + 1)
        if len(data) > MAX_SECRET_BYTES:
            raise ValueError(f"{self.path}: larger than {MAX_SECRET_BYTES} bytes")
        text = data.decode("utf-8").strip()
        if not text:
            raise ValueError(f"{self.path}: empty")
        if any(c in text for c in "\r\n\0"):
            raise ValueError(f"{self.path}: more than one line (a header value cannot hold it)")
        self.reads += 1
        return text
