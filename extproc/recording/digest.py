"""Per-writer digest chain: signed, chained lists of every segment a writer stored (the store-wide evidence).

A manifest proves a segment and links it to the one before, but nothing in a stream proves the stream (or the
whole session) ever existed: deleting a session folder, or a stream's last segments, leaves no trace inside
what remains. So each writer (processor process) also keeps a digest chain, in the spirit of CloudTrail's
log-file integrity digests: every ``interval`` seconds, and at close, it stores a digest naming every segment
it shipped in the period (session, stream, segment number, SHA-256, first and last seq). Each digest carries
the SHA-256 of the previous one and an Ed25519 signature; an empty period still gets a digest, so a gap in
time is as visible as a gap in numbers. ``audit.py`` walks the digests against the store.

So that a killed writer's last period is not lost, the log keeps a small journal in the writer's spool folder
(``digest.head``: the next number and link; ``digest.period``: the segments stored since the last digest, one
line each; ``digest.<n>.json``: a digest not yet stored). The completer that adopts a dead writer's folder stores
its queued digests and closes its chain on its behalf (``close_for_dead_writer``), signed and marked ``closed_by``.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from extproc.errors import StoreError
from extproc.recording import jsonio
from extproc.recording.atomic import write_atomic
from extproc.recording.manifest import GENESIS, Manifest, Signer
from extproc.recording.store import Segment, Store
from extproc.tasks import cancel

log = logging.getLogger(__name__)
VERSION = 1


@dataclass(frozen=True, slots=True)
class Listed:
    """One stored segment as a digest names it."""

    session: str
    stream: str  # the stream's writer id (the manifest's ``writer``)
    segment: int
    sha256: str
    first: int
    last: int
    final: bool = False

    @classmethod
    def of(cls, m: Manifest) -> Listed:
        return cls(m.session, m.writer, m.segment, m.sha256, m.first, m.last, m.final)


@dataclass(slots=True)
class Digest:
    """One period of one writer. ``sig`` covers every other field (canonical JSON)."""

    writer: str
    number: int
    start: float  # wall-clock seconds: the period covered
    end: float
    prev: str  # SHA-256 of the previous digest's stored bytes; GENESIS for number 0
    segments: list[Listed] = field(default_factory=list)
    final: bool = False  # the writer closed: nothing follows
    closed_by: str = ""  # the writer that closed this chain for a dead one (the completer), else empty
    v: int = VERSION
    key_id: str = ""
    sig: str = ""

    def doc(self) -> dict[str, Any]:
        return asdict(self)

    def signed_part(self) -> bytes:
        doc = self.doc()
        doc.pop("sig")
        return jsonio.dumps_sorted(doc)

    def to_bytes(self) -> bytes:
        return jsonio.dumps_sorted(self.doc())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Digest:
        """Parse a stored digest; ValueError if it is not one."""
        doc = jsonio.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("digest is not a JSON object")
        try:
            known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
            known["segments"] = [Listed(**s) for s in known.get("segments", [])]
            return cls(**known)
        except TypeError as e:
            raise ValueError(f"digest fields are wrong: {e}") from None


def digest_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


class DigestLog:
    """Collects what this writer's uploaders stored and writes the writer's digest chain to the store.

    ``add`` is called by an uploader once the store confirmed a segment. A digest the store refuses stays queued
    (with its number and chain link fixed) and is retried first next time, so the chain never forks.
    """

    def __init__(
        self,
        store: Store,
        writer: str,
        signer: Signer,
        interval: float = 300.0,
        wall_clock: Callable[[], float] = time.time,
        journal: Path | None = None,
    ) -> None:
        self.store = store
        self.journal = journal  # the writer's spool folder (see the module docstring); None: memory only
        self.writer = writer
        self.signer = signer
        self.interval = interval
        self.written = 0
        self._wall = wall_clock
        self._period: list[Listed] = []
        self._start = wall_clock()
        self._number = 0
        self._prev = GENESIS
        self._pending: list[tuple[int, bytes]] = []  # sealed, not yet stored
        self._task: asyncio.Task[None] | None = None

    def add(self, manifest: Manifest) -> Listed:
        entry = Listed.of(manifest)
        self._period.append(entry)
        return entry

    async def stored(self, segment: Segment) -> None:
        """An uploader's ``on_stored``: the store confirmed ``segment``."""
        entry = self.add(Manifest.from_bytes(segment.manifest))
        if self.journal is not None:  # a line of ~200 bytes into the page cache: written here, no thread hop
            _append(self.journal / PERIOD, jsonio.dumps(asdict(entry)) + b"\n")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="digests")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.flush()

    async def close(self) -> bool:
        """Write the closing digest (and any still queued). False if the store refused (logged)."""
        task, self._task = self._task, None
        await cancel(task)
        return await self.flush(final=True)

    def seal(self, final: bool = False) -> Digest:
        """End the current period: its digest is numbered, chained and signed, and queued for the store."""
        now = self._wall()
        digest = Digest(self.writer, self._number, self._start, now, self._prev, self._period, final)
        raw = sign(digest, self.signer)
        self._pending.append((digest.number, raw))
        self._number, self._prev, self._period, self._start = digest.number + 1, digest_hash(raw), [], now
        return digest

    async def flush(self, final: bool = False) -> bool:
        """Seal the period and store every queued digest in order; False as soon as the store refuses one."""
        self.seal(final)
        if self.journal is not None:
            number, raw = self._pending[-1]
            await asyncio.to_thread(_journal_sealed, self.journal, number, raw, self._number, self._prev)
        while self._pending:
            number, raw = self._pending[0]
            try:
                await self.store.put_digest(self.writer, number, raw)
            except StoreError as e:
                log.error("cannot store digest %d of writer %s (retried next interval): %s", number, self.writer, e)
                return False
            self._pending.pop(0)
            self.written += 1
            if self.journal is not None:
                await asyncio.to_thread((self.journal / f"digest.{number:08d}.json").unlink, missing_ok=True)
        return True


HEAD = "digest.head"
PERIOD = "digest.period"


def sign(digest: Digest, signer: Signer) -> bytes:
    if signer.public is not None:
        digest.key_id = signer.key_id
        digest.sig = signer.sign_bytes(digest.signed_part())
    return digest.to_bytes()


_journal_failing: list[str] = []  # the journal write failure last logged (at most one)


def _append(path: Path, line: bytes) -> None:
    """Append a journal line. A disk that refuses it (full) must not stop the uploader that calls this, since
    shipping segments is what frees that disk: the journal only helps after a kill (the digest itself is in
    memory), so the failure is logged once per state change and the line taken back, never torn."""
    try:
        with open(path, "ab", buffering=0) as f:  # no fsync: a killed process loses nothing the kernel has
            end = os.fstat(f.fileno()).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[f.write(view) or 0 :]
            except OSError:
                try:
                    os.ftruncate(f.fileno(), end)
                except OSError:
                    pass
                raise
    except FileNotFoundError:  # the folder went with a clean close; the closing digest is in memory
        return
    except OSError as e:
        if not _journal_failing:
            name = errno.errorcode.get(e.errno or 0, "")
            log.error("digest journal %s: line not written: %s (%s); kept in memory", path, e.strerror, name)
            _journal_failing.append(str(path))
        return
    if _journal_failing:
        log.warning("digest journal %s: writable again", _journal_failing.pop())


def _journal_sealed(folder: Path, number: int, raw: bytes, next_number: int, prev: str) -> None:
    """The sealed digest waits as a file until stored; the head moves on; the period starts empty."""
    if not folder.is_dir():
        return
    write_atomic(folder / f"digest.{number:08d}.json", raw)
    write_atomic(folder / HEAD, jsonio.dumps({"next": next_number, "prev": prev}))
    (folder / PERIOD).unlink(missing_ok=True)


async def close_for_dead_writer(folder: Path, writer: str, store: Store, signer: Signer, closer: str) -> bool:
    """Store a dead writer's queued digests and its closing digest (its last period), from its journal.

    True when done (or there was no journal); False if the store refused (the journal stays: retried later).
    """
    journal = await asyncio.to_thread(_read_journal, folder)
    if journal is None:
        return True
    queued, head, entries = journal
    now = time.time()
    closing = Digest(writer, head["next"], now, now, head["prev"], entries, final=True, closed_by=closer)
    closed = bool(queued) and Digest.from_bytes(queued[-1][1]).final  # it closed, but could not store it
    try:
        for number, raw in queued:
            await store.put_digest(writer, number, raw)
        if not closed:
            await store.put_digest(writer, closing.number, sign(closing, signer))
    except StoreError as e:
        log.error("cannot close the digest chain of dead writer %s (retried next round): %s", writer, e)
        return False
    await asyncio.to_thread(_forget_journal, folder)
    log.warning("closed the digest chain of dead writer %s at digest %d", writer, closing.number)
    return True


def _read_journal(folder: Path) -> tuple[list[tuple[int, bytes]], dict[str, Any], list[Listed]] | None:
    queued = [(int(p.name.split(".")[1]), p.read_bytes()) for p in sorted(folder.glob("digest.[0-9]*.json"))]
    head_path, period_path = folder / HEAD, folder / PERIOD
    if not queued and not head_path.exists() and not period_path.exists():
        return None
    head = jsonio.loads(head_path.read_bytes()) if head_path.exists() else {"next": 0, "prev": GENESIS}
    entries = []
    for line in period_path.read_bytes().split(b"\n") if period_path.exists() else []:
        try:
            entries.append(Listed(**jsonio.loads(line)))
        except (ValueError, TypeError):  # a torn last line: its segment shows up as "not listed in any digest"
            continue
    return queued, head, entries


def _forget_journal(folder: Path) -> None:
    for path in [*folder.glob("digest.[0-9]*.json"), folder / HEAD, folder / PERIOD]:
        path.unlink(missing_ok=True)
