"""Local directory store: <root>/<session>/<writer>.jsonl, append-only, fsynced on ``sync``."""

from __future__ import annotations

import asyncio
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import aiofiles

from extproc.errors import StoreError
from extproc.recording.store import safe_key

SUFFIX = ".jsonl"


class FileStore:
    """Keeps a bounded set of open append handles; ``sync`` fsyncs the ones written since the last sync."""

    def __init__(self, root: str | Path, max_open: int = 256) -> None:
        self.root = Path(root)
        self._open: OrderedDict[Path, Any] = OrderedDict()
        self._dirty: set[Path] = set()
        self._max_open = max_open

    def _path(self, session: str, writer: str) -> Path:
        return self.root / safe_key(session) / (safe_key(writer) + SUFFIX)

    async def append(self, session: str, writer: str, data: bytes) -> None:
        path = self._path(session, writer)
        try:
            f = self._open.get(path)
            if f is None:
                await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
                f = await aiofiles.open(path, "ab")
                self._open[path] = f
                await self._evict()
            else:
                self._open.move_to_end(path)
            await f.write(data)
            await f.flush()
            self._dirty.add(path)
        except OSError as e:
            await self._forget(path)
            raise StoreError(f"cannot append to {path}: {e.strerror or e}") from e

    async def _evict(self) -> None:
        while len(self._open) > self._max_open:
            path, f = self._open.popitem(last=False)
            if path in self._dirty:
                await asyncio.to_thread(os.fsync, f.fileno())
                self._dirty.discard(path)
            await f.close()

    async def _forget(self, path: Path) -> None:
        f = self._open.pop(path, None)
        self._dirty.discard(path)
        if f is not None:
            try:
                await f.close()
            except OSError:
                pass

    async def sync(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for path in dirty:
            f = self._open.get(path)
            if f is None:
                continue
            try:
                await asyncio.to_thread(os.fsync, f.fileno())
            except OSError as e:
                self._dirty.add(path)
                raise StoreError(f"cannot fsync {path}: {e.strerror or e}") from e

    async def close(self) -> None:
        try:
            await self.sync()
        finally:
            for f in self._open.values():
                await f.close()
            self._open.clear()

    def list_sessions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob("*" + SUFFIX)))

    def read_session(self, session: str) -> dict[str, bytes]:
        folder = self.root / safe_key(session)
        return {p.name.removesuffix(SUFFIX): p.read_bytes() for p in sorted(folder.glob("*" + SUFFIX))}
