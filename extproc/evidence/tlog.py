"""The transparency log over the recordings: every stored segment manifest and digest is a leaf.

**One log per writer.** Each processor process already records as its own writer and never shares a file or an
object with another (``workers.py``); its log follows the same rule: origin ``<origin>/<writer>``, stored under
``<writer>/`` of the log folder. So N workers, or N hosts on one S3 bucket, append with no lock, no lease and no
compare-and-swap, and a crashed writer cannot leave a half-appended tree for another to repair. The price: a
witness follows one log per writer (listed in the log folder) and a restart starts a new log, exactly as it
starts a new digest chain. A single appender (one log for the whole gateway) would need a leader among hosts
sharing a bucket; nothing else in the gateway needs one, so the log does not introduce it.

**Off the request path.** The uploader tells the log of each segment the store confirmed (``segment_stored``,
a list append on the event loop); the digest log's store tells it of each digest (``LoggedDigests``). Every
``interval`` seconds, and at close, ``checkpoint`` hashes the new leaves, writes the tiles that filled, the
partial tiles and entry bundle of the new size, a per-session index (``where/``), then the signed checkpoint,
optionally timestamped by an RFC 3161 authority (``tsa.py``): all in a worker thread. A write the storage
refuses is retried first next round (tiles are immutable and deterministic, so a rewrite is harmless).

**Nothing stored is left out after a kill.** Leaves wait in memory until the next checkpoint, so each is also
appended to a journal in the writer's spool folder (``tlog.queued``: one line per leaf, no fsync, trimmed after each
published checkpoint). The completer that adopts a killed writer's folder hands that journal to its own log
(``adopt``): every manifest and digest the dead writer stored after its last checkpoint becomes a leaf of the
adopter's log. A writer killed while publishing may so have a leaf in both logs; none in neither.

An entry is the canonical JSON ``{"kind":"segment","session","stream","segment","manifest"}`` (``manifest``: the
SHA-256 of the stored manifest line) or ``{"kind":"digest","writer","number","digest"}``; session and writer
are written as the store names them (``safe_key``). So anyone holding a manifest or digest rebuilds its entry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from extproc.evidence.note import NoteSigner
from extproc.evidence.tiles import Blobs, TileBuilder
from extproc.recording import jsonio
from extproc.recording.manifest import Manifest
from extproc.recording.store import Segment, Store, safe_key
from extproc.tasks import cancel

if TYPE_CHECKING:
    from extproc.evidence.config import TransparencyLogConfig

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint"
TOKEN = "checkpoint.tsr"  # the RFC 3161 token of the checkpoint beside it (the DER TimeStampResp)
HISTORY = "checkpoints"  # every checkpoint this log published, by size: what a witness would have kept
JOURNAL = "tlog.queued"  # in the writer's spool folder: the leaves queued since the last published checkpoint


def segment_entry(manifest: bytes) -> bytes:
    """The leaf entry of a stored manifest line."""
    m = Manifest.from_bytes(manifest)
    return _segment_entry(hashlib.sha256(manifest).hexdigest(), m.segment, safe_key(m.session), safe_key(m.writer))


def _segment_entry(digest: str, segment: int, session: str, stream: str) -> bytes:
    # Exactly jsonio.dumps_sorted of the five keys (safe keys and hex need no escaping), without building a dict:
    # the processor pays this once per stored segment.
    return (
        f'{{"kind":"segment","manifest":"{digest}","segment":{segment},"session":"{session}","stream":"{stream}"}}'
    ).encode()


def digest_entry(writer: str, number: int, raw: bytes) -> bytes:
    """The leaf entry of a stored digest."""
    return jsonio.dumps_sorted(
        {"kind": "digest", "writer": safe_key(writer), "number": number, "digest": hashlib.sha256(raw).hexdigest()}
    )


def where_path(log_key: str, session: str, first: int) -> str:
    """The index object of ``session``'s leaves appended in the batch that started at leaf ``first``."""
    return f"{log_key}/where/{safe_key(session)}/{first:012d}"


class Stamper(Protocol):
    """Something that timestamps checkpoint notes (``tsa.TsaClient``): returns the DER TimeStampResp."""

    def stamp(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Published:
    size: int
    note: bytes


class TransparencyLog:
    """One writer's log: leaves queued on the event loop, tiles and checkpoints written in a thread."""

    def __init__(
        self,
        blobs: Blobs,
        origin: str,
        writer: str,
        signer: NoteSigner,
        *,
        interval: float = 60.0,
        stamper: Stamper | None = None,
        copies: Blobs | None = None,
        wall_clock: Callable[[], float] = time.time,
        journal: Path | None = None,
    ) -> None:
        self.blobs = blobs
        self.journal = journal / JOURNAL if journal is not None else None  # None: leaves kept in memory only
        self.key = safe_key(writer)
        self.origin = f"{origin.rstrip('/')}/{self.key}"
        # tlog-checkpoint: "the log's key name in its signature line SHOULD match the origin line". One key signs
        # every writer's log, each under its own origin (a verifier derives the name from the line and the key).
        self.signer = NoteSigner(self.origin, signer.private)
        self.interval = interval
        self.stamper = stamper
        self.copies = copies  # a write-once second home for checkpoints (Object Lock bucket), or None
        self._uncopied: list[tuple[str, bytes]] = []
        self.published: Published | None = None
        self._wall = wall_clock
        self._tree = TileBuilder()
        # entry, and for a segment where it belongs (session, stream key, segment number); None for a digest
        self._queued: list[tuple[bytes, tuple[str, str, int] | None]] = []
        self._unwritten: list[tuple[str, bytes]] = []  # blobs the storage refused, oldest first
        self._lock = threading.Lock()  # one publisher at a time (the interval task, close)
        self._task: asyncio.Task[None] | None = None
        self.failures = 0
        # Told, on the event loop, of the segments a stored checkpoint newly covers: (origin, checkpoint size,
        # [(session, stream key, segment, leaf index)]). The SIEM export's follow-up proof events (extproc/export/).
        self.on_covered: Callable[[str, int, list[tuple[str, str, int, int]]], None] | None = None
        self._uncovered: list[tuple[str, str, int, int]] = []  # appended, the checkpoint not stored yet
        self._covered: list[tuple[str, str, int, int]] = []  # covered by a stored checkpoint, not told yet

    @property
    def size(self) -> int:
        return self._tree.size

    async def segment_stored(self, segment: Segment) -> None:
        """An uploader's ``on_stored``: one leaf for the manifest the store confirmed (a segment's session, writer
        and number are its manifest's; ``segment_entry`` of the stored manifest gives the same bytes)."""
        stream = safe_key(segment.writer)
        digest = hashlib.sha256(segment.manifest).hexdigest()
        entry = _segment_entry(digest, segment.number, safe_key(segment.session), stream)
        self._queue(entry, (segment.session, stream, segment.number))

    def digest_stored(self, writer: str, number: int, raw: bytes) -> None:
        self._queue(digest_entry(writer, number, raw), None)

    def _queue(self, entry: bytes, place: tuple[str, str, int] | None) -> None:
        self._queued.append((entry, place))
        if self.journal is not None:  # a line into the page cache, as the digest journal does: no thread hop
            _journal_append(self.journal, jsonio.dumps({"entry": entry.decode(), "place": place}) + b"\n")

    async def adopt(self, folder: Path) -> int:
        """The completer's hook: the leaves a killed writer had queued (its journal in its spool ``folder``) join
        this log, journaled here before the dead writer's journal goes. Returns how many."""
        path = folder / JOURNAL
        found = await asyncio.to_thread(_read_journal, path)
        for entry, place in found:
            self._queue(entry, place)
        await asyncio.to_thread(path.unlink, missing_ok=True)
        if found:
            log.warning(
                "transparency log %s: %d leaves of dead writer %s appended", self.origin, len(found), folder.name
            )
        return len(found)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="transparency-log")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.checkpoint()
            except Exception:  # a bug must not end checkpoints for the rest of the process's life
                self.failures += 1
                log.exception("transparency log %s: checkpoint failed (next one in %g s)", self.origin, self.interval)

    async def close(self) -> bool:
        """The last checkpoint (everything stored so far); False if the storage refused it (logged)."""
        task, self._task = self._task, None
        await cancel(task)
        return await self.checkpoint(final=True)

    async def checkpoint(self, final: bool = False) -> bool:
        """Append what was queued and publish a signed checkpoint of the new size. False if storage refused."""
        batch, self._queued = self._queued, []
        published = await asyncio.to_thread(self.publish, batch, final)
        if published and self.journal is not None:  # on the loop, so no leaf is queued while the journal is trimmed
            _journal_rewrite(self.journal, self._queued)
        covered, self._covered = self._covered, []
        if covered and self.on_covered is not None and self.published is not None:
            try:
                self.on_covered(self.origin, self.published.size, covered)
            except Exception:  # a listener's bug costs its news, never the log
                log.exception("transparency log %s: on_covered failed", self.origin)
        return published

    def publish(self, batch: list[tuple[bytes, tuple[str, str, int] | None]], final: bool = False) -> bool:
        with self._lock:
            first = self._tree.size
            writes: list[tuple[str, bytes]] = []
            where: dict[str, list[list[Any]]] = {}
            for entry, place in batch:
                index = self._tree.size
                writes += [(f"{self.key}/{path}", data) for path, data in self._tree.add(entry)]
                if place is not None:
                    where.setdefault(place[0], []).append([index, place[1], place[2]])
                    if self.on_covered is not None:
                        self._uncovered.append((place[0], place[1], place[2], index))
            if batch or self.published is None or final:
                writes += [(f"{self.key}/{path}", data) for path, data in self._tree.partials()]
                for session, leaves in where.items():
                    writes.append((where_path(self.key, session, first), jsonio.dumps({"leaves": leaves})))
                writes += self._signed()
            self._unwritten += writes
            stored = self._flush()  # the checkpoint is the last write: stored means it covers every leaf so far
            if stored and self._uncovered:
                self._covered += self._uncovered
                self._uncovered = []
            return stored and self._copy()

    def _copy(self) -> bool:
        while self._uncopied and self.copies is not None:
            path, data = self._uncopied[0]
            try:
                self.copies.put(path, data)
            except Exception as e:  # as for the tiles: retried next round
                self.failures += 1
                log.error("transparency log %s: cannot copy %s to the checkpoint bucket: %s", self.origin, path, e)
                return False
            self._uncopied.pop(0)
        return True

    def _signed(self) -> list[tuple[str, bytes]]:
        from extproc.evidence.note import Checkpoint

        size = self._tree.size
        note = self.signer.sign(Checkpoint(self.origin, size, self._tree.root()).text()).encode()
        out = [(f"{self.key}/{HISTORY}/{size:012d}", note)]
        if self.stamper is not None:
            try:
                token = self.stamper.stamp(note)
            except Exception as e:  # the TSA is outside: its failure costs the timestamp, never the checkpoint
                log.error("transparency log %s: no timestamp for checkpoint %d: %s", self.origin, size, e)
                out.append((f"{self.key}/{TOKEN}", b""))  # empty: "not timestamped", never an older checkpoint's
            else:
                out.append((f"{self.key}/{HISTORY}/{size:012d}.tsr", token))
                out.append((f"{self.key}/{TOKEN}", token))
        if self.copies is not None:  # immutable names only: a locked object is never overwritten
            self._uncopied += [item for item in out if f"/{HISTORY}/" in item[0]]
        out.append((f"{self.key}/{CHECKPOINT}", note))  # last: it never names tiles that are not there
        self.published = Published(size, note)
        return out

    def _flush(self) -> bool:
        put_many = getattr(self.blobs, "put_many", None)
        if put_many is not None and len(self._unwritten) > 2:  # all but the checkpoint at once, made durable once
            try:
                put_many(self._unwritten[:-1])
            except Exception as e:  # as below: retried next round (every write is idempotent)
                self.failures += 1
                log.error("transparency log %s: cannot store tiles (retried next round): %s", self.origin, e)
                return False
            del self._unwritten[:-1]
        while self._unwritten:
            path, data = self._unwritten[0]
            try:
                self.blobs.put(path, data)
            except Exception as e:  # OSError, botocore's many kinds: all mean "not stored", retried next round
                self.failures += 1
                log.error("transparency log %s: cannot store %s (retried next round): %s", self.origin, path, e)
                return False
            self._unwritten.pop(0)
        return True


def _journal_append(path: Path, line: bytes) -> None:
    try:
        with open(path, "ab", buffering=0) as f:  # no fsync: a killed process loses nothing the kernel has
            f.write(line)
    except FileNotFoundError:  # the spool folder went with a clean close: the final checkpoint is in memory
        pass
    except OSError as e:  # a full disk: the leaf is still in memory, only a kill could lose it now
        log.error("transparency log journal %s: leaf not journaled: %s", path, e.strerror)


def _journal_rewrite(path: Path, queued: list[tuple[bytes, tuple[str, str, int] | None]]) -> None:
    """The journal after a published checkpoint: only the leaves queued since (usually none)."""
    try:
        if not queued:
            path.unlink(missing_ok=True)
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(b"".join(jsonio.dumps({"entry": e.decode(), "place": p}) + b"\n" for e, p in queued))
        os.replace(tmp, path)
    except OSError as e:  # kept as it was: at worst a killed writer's published leaves are logged once more
        log.error("transparency log journal %s: cannot trim: %s", path, e.strerror)


def _read_journal(path: Path) -> list[tuple[bytes, tuple[str, str, int] | None]]:
    """A dead writer's journaled leaves; a torn last line (killed mid-write) is skipped."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    out: list[tuple[bytes, tuple[str, str, int] | None]] = []
    for line in raw.split(b"\n"):
        try:
            doc = jsonio.loads(line)
            place = doc["place"]
            out.append((doc["entry"].encode(), (str(place[0]), str(place[1]), int(place[2])) if place else None))
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            continue
    return out


class LoggedDigests:
    """The store the digest log writes through: a digest the store confirmed becomes a leaf of the log."""

    def __init__(self, store: Store, tlog: TransparencyLog) -> None:
        self._store = store
        self._tlog = tlog

    async def put_digest(self, writer: str, number: int, data: bytes) -> None:
        await self._store.put_digest(writer, number, data)
        self._tlog.digest_stored(writer, number, data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def build_log(
    cfg: TransparencyLogConfig, recording_key: Path | None, store: Store, writer: str, journal: Path | None = None
) -> TransparencyLog:
    """The log of ``writer`` as ``recording.transparency_log`` configures it (``journal``: its spool folder)."""
    from extproc.evidence.tiles import blobs_for

    path = cfg.signing_key or recording_key
    if path is None:  # the config refuses this; a hand-built one must not start an unsigned log
        raise ValueError("recording.transparency_log needs a signing key")
    signer = load_note_signer(cfg.origin, path)
    stamper = None
    if cfg.tsa_url is not None:
        from extproc.evidence.tsa import TsaClient

        stamper = TsaClient(cfg.tsa_url, timeout=cfg.tsa_timeout_s)
    copies = None
    if (b := cfg.checkpoint_bucket) is not None:
        from extproc.evidence.tiles import S3Blobs
        from extproc.recording.store.s3 import S3Store

        locked = S3Store(
            b.bucket,
            b.prefix,
            region=b.region,
            endpoint_url=b.endpoint_url,
            object_lock_mode=b.lock_mode,
            object_lock_days=b.retain_days,
        )
        copies = S3Blobs(locked, b.prefix)
    return TransparencyLog(
        blobs_for(store),
        cfg.origin,
        writer,
        signer,
        interval=cfg.checkpoint_interval_s,
        stamper=stamper,
        copies=copies,
        journal=journal,
    )


def load_note_signer(name: str, path: Path) -> NoteSigner:
    """The checkpoint signer: the Ed25519 key at ``path`` under the key name ``name``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from extproc.errors import ConfigError

    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ConfigError(f"recording.transparency_log: cannot load signing key {path}: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"recording.transparency_log: {path} is not an Ed25519 private key")
    return NoteSigner(name, key)
