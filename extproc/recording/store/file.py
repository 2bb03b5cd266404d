"""Local directory store: ``<root>/<session>/<writer>.jsonl`` plus ``<writer>.manifests`` (one manifest per line).

A segment is a finished chunk of the stream file: its lines are appended, fsynced, then its manifest line.
Readers see whole segments only; the events of a segment still being written live in the spool.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

from extproc.errors import StoreError
from extproc.recording import jsonio
from extproc.recording.atomic import write_atomic
from extproc.recording.store import Segment, StreamData, safe_key

SUFFIX = ".jsonl"
MANIFESTS = ".manifests"
DIGESTS = ".digests"  # <root>/.digests/<writer>/<number>.json: a dot-name is never a session


class FileStore:
    """Append-only files; a retried segment is detected by its number and never appended twice."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._shipped: dict[Path, tuple[int, int]] = {}  # data path -> (segments stored, data bytes)
        self._lock = threading.Lock()  # several uploaders (own spool, adopted ones) may put at once

    def _paths(self, session: str, writer: str) -> tuple[Path, Path]:
        folder = self.root / safe_key(session)
        return folder / (safe_key(writer) + SUFFIX), folder / (safe_key(writer) + MANIFESTS)

    async def put_segment(self, segment: Segment) -> None:
        data_path, manifest_path = self._paths(segment.session, segment.writer)
        try:
            await asyncio.to_thread(self._put, segment, data_path, manifest_path)
        except OSError as e:
            self._shipped.pop(data_path, None)
            raise StoreError(f"cannot append to {data_path}: {e.strerror or e}") from e

    async def put_segments(self, segments: list[Segment]) -> tuple[int, Exception | None]:
        """Every segment in one thread hop, in order; stops at the first that fails."""
        return await asyncio.to_thread(self.put_segments_blocking, segments)

    def put_segments_blocking(self, segments: list[Segment]) -> tuple[int, Exception | None]:
        """``put_segments`` in the calling thread (the uploader's hop that also reads them from the spool)."""
        for i, segment in enumerate(segments):
            data_path, manifest_path = self._paths(segment.session, segment.writer)
            try:
                self._put(segment, data_path, manifest_path)
            except OSError as e:
                self._shipped.pop(data_path, None)
                return i, StoreError(f"cannot append to {data_path}: {e.strerror or e}")
            except StoreError as e:
                return i, e
        return len(segments), None

    def _put(self, segment: Segment, data_path: Path, manifest_path: Path) -> None:
        with self._lock:
            self._put_locked(segment, data_path, manifest_path)

    def _put_locked(self, segment: Segment, data_path: Path, manifest_path: Path) -> None:
        done, size = self._shipped.get(data_path) or self._scan(data_path, manifest_path)
        if segment.number < done:
            return  # stored by an earlier attempt whose confirmation was lost
        if segment.number > done:
            raise StoreError(f"segment {segment.number} of {data_path} arrives before segment {done}")
        data_path.parent.mkdir(parents=True, exist_ok=True)
        with open(data_path, "ab") as f:
            if f.tell() != size:  # an earlier attempt appended data but not its manifest: drop that half
                f.truncate(size)
            f.write(segment.data)
            f.flush()
            os.fsync(f.fileno())
        with open(manifest_path, "ab") as f:
            f.write(segment.manifest + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._shipped[data_path] = (done + 1, size + len(segment.data))

    @staticmethod
    def _scan(data_path: Path, manifest_path: Path) -> tuple[int, int]:
        """How many segments, and data bytes, are stored already (first touch of a stream in this process)."""
        if not manifest_path.exists():
            return 0, 0
        raw = manifest_path.read_bytes()
        if raw and not raw.endswith(b"\n"):  # a torn manifest write: that segment was never confirmed
            raw = raw[: raw.rfind(b"\n") + 1]
            with open(manifest_path, "r+b") as f:
                f.truncate(len(raw))
        lines = raw.splitlines()
        return len(lines), sum(int(jsonio.loads(line).get("size", 0)) for line in lines)

    async def close(self) -> None:
        self._shipped.clear()

    def list_sessions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and any(p.glob("*" + SUFFIX))
        )

    async def put_digest(self, writer: str, number: int, data: bytes) -> None:
        path = self.root / DIGESTS / safe_key(writer) / f"{number:08d}.json"
        try:
            await asyncio.to_thread(_write_new, path, data)
        except OSError as e:
            raise StoreError(f"cannot write digest {path}: {e.strerror or e}") from e

    def read_digests(self) -> dict[str, dict[int, bytes]]:
        out: dict[str, dict[int, bytes]] = {}
        folder = self.root / DIGESTS
        for writer in sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []:
            for p in sorted(writer.glob("*.json")):
                if p.stem.isdigit():
                    out.setdefault(writer.name, {})[int(p.stem)] = p.read_bytes()
        return out

    def read_session(self, session: str) -> dict[str, StreamData]:
        folder = self.root / safe_key(session)
        try:  # one listing, no glob (a reindex reads 100,000 folders: glob's pattern machinery was 10% of it)
            with os.scandir(folder) as entries:
                names = {e.name for e in entries}
        except (FileNotFoundError, NotADirectoryError):
            return {}
        out = {}
        for name in sorted(n for n in names if n.endswith(SUFFIX) and not n.startswith(".")):  # as glob('*')
            writer = name.removesuffix(SUFFIX)
            manifests = writer + MANIFESTS
            lines = (folder / manifests).read_bytes().splitlines() if manifests in names else []
            out[writer] = StreamData((folder / name).read_bytes(), lines)
        return out


def _write_new(path: Path, data: bytes) -> None:
    """Write whole (temporary name, fsync, rename), its folder made first; the same bytes again are a no-op."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
