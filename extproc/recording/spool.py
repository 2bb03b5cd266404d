"""The write-ahead spool: every event reaches a local file (appended, fsynced on the flush interval) before
anything else happens to it. Finished segments wait here, with their signed manifest, until the uploader has a
confirmed copy in the store; only then are they deleted.

Layout, one folder per writer (processor process), locked by it while it lives::

    <spool>/<writer>/lock                      flock held by the live writer; free = the writer is gone
    <spool>/<writer>/<stream>/meta.json        {"session": …, "writer": …}
    <spool>/<writer>/<stream>/00000003.seg     the segment's JSON lines, exactly as they will be stored
    <spool>/<writer>/<stream>/00000003.manifest   present = sealed, waiting for upload
    <spool>/<writer>/<stream>/head.manifest    the newest manifest already uploaded (to continue the chain)
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
from collections import OrderedDict, deque
from pathlib import Path
from typing import IO

from extproc.errors import StoreError
from extproc.recording import jsonio
from extproc.recording.atomic import write_atomic
from extproc.recording.behind import DiskWorker, Job, SpoolWriteError, fsync_all
from extproc.recording.manifest import Manifest
from extproc.recording.spool_files import (
    Append,
    Sealed,
    Sealing,
    SegmentKey,
    Unfinished,
    close_files,
    read_meta,
    read_segments,
    seal_all,
    stream_folder,
)
from extproc.recording.store import LocalStore, Segment, Store, safe_key

HEAD = "head.manifest"


class Spool:
    """One writer's spool folder. Blocking file work runs in a thread; the event loop never waits on a disk."""

    def __init__(self, root: Path, writer: str, max_bytes: int = 1 << 30, max_open: int = 256) -> None:
        self.writer = writer  # the writer id whose streams this folder holds (the recorder's)
        self.path = Path(root) / safe_key(writer)
        self.max_bytes = max_bytes
        self.size = 0
        self.is_open = False
        self.ready: deque[Sealed] = deque()  # sealed, in seal order: each stream's segments stay in order
        self.changed = asyncio.Event()  # set when something was sealed (wakes the uploader)
        self._lock: IO[bytes] | None = None
        # Open segment files by (session, writer, segment): no path is built for an append to an open file.
        self._handles: OrderedDict[SegmentKey, IO[bytes]] = OrderedDict()
        self._ends: dict[SegmentKey, int] = {}  # each open segment file's size: no fstat per append
        self._dirty: set[SegmentKey] = set()
        self._syncing: set[SegmentKey] = set()  # the keys of a ``sync`` in progress (a thread fsyncs them)
        self._max_open = max_open
        self._folders: set[str] = set()  # stream folders known to exist (with their meta.json)
        # Seals, fsyncs and closes of ``write_behind`` run here, in order, off the data path.
        self.behind = DiskWorker()

    @classmethod
    def beside(cls, store: Store, writer: str, max_bytes: int = 1 << 30) -> Spool:
        """The default spool of a local store: ``<root>/.spool`` (a remote store needs an explicit spool folder)."""
        if not isinstance(store, LocalStore):
            raise ValueError("a spool folder is required for a store without a local root")
        return cls(Path(store.root) / ".spool", writer, max_bytes)

    @property
    def has_room(self) -> bool:
        return self.is_open and self.size < self.max_bytes

    # --- owning a folder ---------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create and lock the folder; adopt whatever a previous life of this folder left (sealed or not)."""
        try:
            await asyncio.to_thread(self._open)
        except OSError as e:
            raise SpoolWriteError(f"cannot open spool {self.path}", e) from e
        self.is_open = True

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        lock = open(self.path / "lock", "ab")
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise
        self._lock = lock
        self._rescan()

    @classmethod
    async def adopt(cls, path: Path, max_bytes: int = 1 << 30) -> Spool | None:
        """Take over a dead writer's folder (its lock is free); None while its writer is alive."""
        spool = cls(path.parent, path.name, max_bytes)
        spool.path = path
        try:
            await spool.open()
        except StoreError:
            return None
        return spool

    def _rescan(self) -> None:
        self.size = 0
        found: list[Sealed] = []
        for folder in sorted(p for p in self.path.iterdir() if p.is_dir()):
            self.size += sum(p.stat().st_size for p in folder.glob("*.seg"))
            meta = read_meta(folder)
            self._folders.add(folder.name)
            for m in sorted(folder.glob("[0-9]*.manifest")):
                manifest = Manifest.from_bytes(m.read_bytes())
                found.append(
                    Sealed(folder, meta["session"], meta["writer"], manifest.segment, manifest.created, manifest.final)
                )
        self.ready.extend(found)

    def streams(self) -> list[Path]:
        """Stream folders present (for recovery)."""
        return sorted(p for p in self.path.iterdir() if p.is_dir()) if self.path.is_dir() else []

    # --- writing -----------------------------------------------------------------------------------------------

    async def write_behind(self, ops: list[Append | Unfinished]) -> tuple[int, StoreError | None]:
        """Appends now, seals behind: what commit points wait for, and nothing more.

        Appends are never refused for size: ``max_bytes`` stops the admission of new exchanges (``has_room``), and
        what exchanges already admitted record must reach the disk, or the seal queued behind a refused line could
        never come and the spool never drain. They go to their files on the event loop, page-cache writes of
        microseconds; a new segment file of a known stream is opened there too. Only a new stream's folder (and
        its ``meta.json``) takes a thread hop first. A seal takes the segment's file out of the append set at once
        and queues its fsync and its manifest to ``behind``, with the closing of files pushed out of the open set;
        the segment joins ``ready`` once its manifest is written. Returns how many ops were taken and the error, if
        any (an append that failed: it and the ops after it were not taken)."""
        if not self.is_open:
            await self.open()
        new = self.new_folders(ops)
        if new:
            try:
                await asyncio.to_thread(self._make_folders, new)
            except OSError as e:
                return 0, SpoolWriteError(f"cannot create spool folder in {self.path}", e)
        return self.write_known(ops)

    def new_folders(self, ops: list[Append | Unfinished]) -> list[tuple[str, str, str]]:
        """The stream folders ``ops`` append to that do not exist yet (creating them takes a thread hop)."""
        new = {
            (name, op.session, op.writer)
            for op in ops
            if isinstance(op, Append)
            and (op.session, op.writer, op.segment) not in self._handles  # an open segment file: its folder exists
            and (name := stream_folder(op.session, op.writer)) not in self._folders
        }
        return sorted(new)

    def write_known(self, ops: list[Append | Unfinished]) -> tuple[int, StoreError | None]:
        """``write_behind`` once every folder of ``ops`` exists (``new_folders`` is empty), on the event loop."""
        retiring: list[tuple[IO[bytes], bool]] = []
        seals: list[Unfinished] = []
        try:
            for i, op in enumerate(ops):
                if isinstance(op, Append):
                    key = (op.session, op.writer, op.segment)
                    try:
                        self._append(key, op.data, retiring)
                    except OSError as e:
                        self._forget(key)
                        path = self._segment_path(key)
                        return i, SpoolWriteError(f"cannot append to spool file {path}", e)
                    self.size += len(op.data)
                else:
                    seals.append(op)
            return len(ops), None
        finally:
            if retiring:  # before the seals: a retired file's data is fsynced before any manifest over it
                self.behind.put(Job(lambda: close_files(retiring), None, f"cannot close spool files in {self.path}"))
            if seals:
                self._seal_behind(seals)

    def sync_behind(self) -> None:
        """Queue an fsync of every segment file written since the last one (behind the seals queued before)."""
        files = [self._handles[k] for k in self._dirty if k in self._handles]
        self._dirty.clear()
        if files:
            self.behind.put(Job(lambda: fsync_all(files), None, f"cannot fsync spool {self.path}"))

    def _seal_behind(self, seals: list[Unfinished]) -> None:
        """Queue the seals of one write as one job (``seal_all``): each segment's file leaves the append set now."""
        items: list[Sealing] = []
        for seal in seals:
            m = seal.manifest
            key = (m.session, m.writer, m.segment)
            self._ends.pop(key, None)
            # Written since the last fsync queued behind (which runs before this seal), or in one still running
            # beside it (``sync``): else the file owes no fsync.
            written = key in self._dirty or key in self._syncing
            self._dirty.discard(key)
            folder = self.path / stream_folder(m.session, m.writer)
            items.append(Sealing(seal, folder, self._handles.pop(key, None), fsync=written))

        def done() -> None:
            for it in items:
                m = it.seal.manifest
                self.ready.append(Sealed(it.folder, m.session, m.writer, m.segment, m.created, m.final))
            self.changed.set()

        self.behind.put(Job(lambda: self._seal_all(items), done, f"cannot seal spool segments in {self.path}"))

    def _seal_all(self, items: list[Sealing]) -> None:
        seal_all(items, self._make_folder)

    def _make_folders(self, streams: list[tuple[str, str, str]]) -> None:
        for name, session, writer in streams:
            self._make_folder(self.path / name, session, writer)

    def _make_folder(self, folder: Path, session: str, writer: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        if not (folder / "meta.json").exists():
            write_atomic(folder / "meta.json", jsonio.dumps({"session": session, "writer": writer}))
        self._folders.add(folder.name)

    def _segment_path(self, key: SegmentKey) -> Path:
        session, writer, segment = key
        return self.path / stream_folder(session, writer) / f"{segment:08d}.seg"

    def _append(self, key: SegmentKey, data: bytes, retiring: list[tuple[IO[bytes], bool]] | None = None) -> None:
        """Append ``data`` to the key's segment file. ``retiring``: files pushed out of the open set go there to be
        fsynced and closed behind (None: here and now, on the blocking path)."""
        f = self._handles.get(key)
        if f is None:
            path = self._segment_path(key)
            folder = path.parent
            if folder.name not in self._folders and not folder.is_dir():  # never on the event loop (write_behind)
                self._make_folder(folder, key[0], key[1])
            f = open(path, "ab", buffering=0)  # unbuffered: no bytes of a failed write linger to be flushed later
            self._handles[key] = f
            while len(self._handles) > self._max_open:
                old, h = self._handles.popitem(last=False)
                self._ends.pop(old, None)
                dirty = old in self._dirty
                self._dirty.discard(old)
                if retiring is not None:
                    retiring.append((h, dirty))
                else:
                    close_files([(h, dirty)])
        else:
            self._handles.move_to_end(key)
        end = self._ends.get(key)
        if end is None:
            end = os.fstat(f.fileno()).st_size
        try:
            view = memoryview(data)
            while view:  # a raw write may take only part of the data (a disk filling up)
                view = view[f.write(view) or 0 :]
        except OSError:
            # A torn line must not stay: the recorder appends these lines again once the disk takes them, and a
            # partial copy in front would break the chain (found by bench/faults/disk_full.py on a full tmpfs).
            os.ftruncate(f.fileno(), end)
            raise
        self._ends[key] = end + len(data)
        self._dirty.add(key)

    def _forget(self, key: SegmentKey) -> None:
        f = self._handles.pop(key, None)
        self._ends.pop(key, None)
        self._dirty.discard(key)
        if f is not None:
            try:
                f.close()
            except OSError:
                pass

    async def sync(self) -> None:
        """fsync every segment file written since the last sync (after the work queued behind)."""
        failure = await self.behind.settled()
        if failure is not None:
            raise failure
        dirty, self._dirty = self._dirty, set()
        self._syncing = dirty
        try:
            await asyncio.to_thread(self._fsync, dirty)
        except OSError as e:
            self._dirty |= dirty
            raise SpoolWriteError(f"cannot fsync spool {self.path}", e) from e
        finally:
            self._syncing = set()

    def _fsync(self, keys: set[SegmentKey]) -> None:
        for k in keys:
            f = self._handles.get(k)
            if f is not None:
                os.fsync(f.fileno())

    async def seal(self, manifest: Manifest, raw: bytes) -> None:
        """Finish a segment: its data durable, then its manifest written atomically; queue it for upload."""
        folder = self.path / stream_folder(manifest.session, manifest.writer)
        data_path = folder / f"{manifest.segment:08d}.seg"
        try:
            await asyncio.to_thread(self._seal, folder, data_path, manifest, raw)
        except OSError as e:
            raise SpoolWriteError(f"cannot seal spool segment {data_path}", e) from e
        self.ready.append(
            Sealed(folder, manifest.session, manifest.writer, manifest.segment, manifest.created, manifest.final)
        )
        self.changed.set()

    def _seal(self, folder: Path, data_path: Path, manifest: Manifest, raw: bytes) -> None:
        key = (manifest.session, manifest.writer, manifest.segment)
        self._dirty.discard(key)
        self._ends.pop(key, None)
        self._finish(folder, data_path, manifest, raw, self._handles.pop(key, None))

    def _finish(self, folder: Path, data_path: Path, manifest: Manifest, raw: bytes, f: IO[bytes] | None) -> None:
        """The segment's data durable (``f``: its open file, fsynced and closed), then its manifest atomically."""
        if f is not None:
            os.fsync(f.fileno())
            f.close()
        elif not data_path.exists():  # an empty segment (a final manifest with nothing after the last one)
            self._make_folder(folder, manifest.session, manifest.writer)
            data_path.touch()
        write_atomic(folder / f"{manifest.segment:08d}.manifest", raw)

    # --- uploading ---------------------------------------------------------------------------------------------

    async def load_many(self, items: list[Sealed], max_bytes: int = 4 << 20) -> list[Segment]:
        """The first of ``items`` as segments, in one thread hop: at least one, then up to ``max_bytes`` of data."""
        return await asyncio.to_thread(read_segments, items, max_bytes)

    async def shipped_many(self, items: list[Sealed]) -> None:
        """``shipped`` for each of ``items``, in order, in one thread hop."""
        size = await asyncio.to_thread(lambda: sum(self._shipped(item) for item in items))
        self.size = max(0, self.size - size)
        self._folders.difference_update(item.folder.name for item in items if item.final)

    @staticmethod
    def _shipped(item: Sealed) -> int:
        size = item.data_path.stat().st_size if item.data_path.exists() else 0
        if item.final:  # the stream is over and stored: nothing of it needs to stay
            shutil.rmtree(item.folder, ignore_errors=True)
            return size
        item.data_path.unlink(missing_ok=True)
        os.replace(item.manifest_path, item.folder / HEAD)
        return size

    async def close(self, remove_if_empty: bool = True) -> None:
        """fsync and close files; release the lock (and drop the folder when nothing is left in it)."""
        if not self.is_open:
            return
        try:
            await self.sync()
        finally:
            await self.behind.stop()
            await asyncio.to_thread(self._close, remove_if_empty)
            self.is_open = False

    def _close(self, remove_if_empty: bool) -> None:
        for f in self._handles.values():
            f.close()
        self._handles.clear()
        self._ends.clear()
        if remove_if_empty and not any(p.is_dir() for p in self.path.iterdir()):
            shutil.rmtree(self.path, ignore_errors=True)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
