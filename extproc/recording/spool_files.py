"""The spool's files and records: what goes in (appends, seals), what comes out (sealed segments), and the blocking
helpers that run in its worker threads. ``spool.py`` owns the folder and the order of things."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from extproc.recording import jsonio
from extproc.recording.manifest import Manifest, Signer
from extproc.recording.store import Segment, safe_key


@dataclass(frozen=True, slots=True)
class Append:
    """Lines for one segment file of one stream."""

    session: str
    writer: str
    segment: int
    data: bytes


@dataclass(slots=True)
class Unfinished:
    """A seal finished behind the data path: the segment's SHA-256 is taken from its file once that is fsynced, then
    the manifest is linked to the stream's previous one (``link``, kept by these seals in order) and signed."""

    manifest: Manifest  # every field but sha256, prev_manifest and the signature
    link: list[str]  # [SHA-256 of the stream's previous manifest]
    signer: Signer


@dataclass(frozen=True, slots=True)
class Sealed:
    """A finished segment waiting in the spool for upload."""

    folder: Path
    session: str
    writer: str
    number: int
    created: float
    final: bool

    @property
    def data_path(self) -> Path:
        return self.folder / f"{self.number:08d}.seg"

    @property
    def manifest_path(self) -> Path:
        return self.folder / f"{self.number:08d}.manifest"


SegmentKey = tuple[str, str, int]  # session, writer, segment


def stream_folder(session: str, writer: str) -> str:
    return f"{safe_key(writer)}@{safe_key(session)}"


def hash_file(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file (absent: empty), read in pieces so a large segment is never held whole."""
    h, size = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 18):
                h.update(chunk)
                size += len(chunk)
    except FileNotFoundError:
        pass
    return h.hexdigest(), size


def read_segments(items: list[Sealed], max_bytes: int) -> list[Segment]:
    out: list[Segment] = []
    size = 0
    for item in items:
        if out and size >= max_bytes:
            break
        data = item.data_path.read_bytes()
        size += len(data)
        out.append(Segment(item.session, item.writer, item.number, data, item.manifest_path.read_bytes(), item.created))
    return out


@dataclass(slots=True)
class Sealing:
    """One seal of a batch behind the data path (``seal_all``): the segment's open file, if it still has one (fsynced
    and closed first), and the signed manifest once it is in place (a retried batch keeps it)."""

    seal: Unfinished
    folder: Path
    file: IO[bytes] | None
    fsync: bool = True  # the file was written since its last fsync
    raw: bytes | None = None

    @property
    def data_path(self) -> Path:
        return self.folder / f"{self.seal.manifest.segment:08d}.seg"


_SEAL_CHUNK = 64  # manifests open at once in a batch (a shutdown can seal thousands of streams)


def seal_all(items: list[Sealing], make_folder: Callable[[Path, str, str], None]) -> None:
    """Finish the seals of one batch, in phases, so that the disk's journal commits are shared by the batch instead
    of paid per seal: every segment file fsynced; then, per chunk, every manifest hashed, linked to its stream's
    previous one, signed and written under a temporary name, those fsynced, then renamed in order. A manifest is
    renamed into place only after its data and its own bytes are durable, as ``write_atomic`` does one at a time.
    Safe to run again after a failure (the worker retries the whole job): seals in place are kept, and the
    streams' links move on only once every seal of the batch is done."""
    for it in items:
        if it.file is not None:
            if it.fsync:
                os.fsync(it.file.fileno())
            it.file.close()
            it.file = None  # closed: a retry must not touch it again
    links: dict[int, str] = {}  # id(stream link) -> SHA-256 of the stream's newest manifest in this batch
    for start in range(0, len(items), _SEAL_CHUNK):
        staged: list[tuple[Sealing, bytes, IO[bytes], Path]] = []
        try:
            for it in items[start : start + _SEAL_CHUNK]:
                seal = it.seal
                if it.raw is None:
                    m = seal.manifest
                    if not it.data_path.exists():  # an empty segment (a final manifest with nothing after the last)
                        make_folder(it.folder, m.session, m.writer)
                        it.data_path.touch()
                    # Exactly the bytes appended (a failed append was cut off again), read back from the page cache.
                    digest, size = hash_file(it.data_path)
                    if size != m.size:
                        raise OSError(f"segment file holds {size} bytes, {m.size} were appended")
                    m.sha256, m.prev_manifest = digest, links.get(id(seal.link), seal.link[0])
                    raw = seal.signer.sign(m).to_bytes()
                    tmp = it.folder / f"{m.segment:08d}.manifest.tmp"
                    out: IO[bytes] = open(tmp, "wb")
                    staged.append((it, raw, out, tmp))
                    out.write(raw)
                    out.flush()
                links[id(seal.link)] = hashlib.sha256(it.raw if it.raw is not None else raw).hexdigest()
            for _, _, out, _ in staged:
                os.fsync(out.fileno())
            for it, raw, out, tmp in staged:
                out.close()
                os.replace(tmp, tmp.with_suffix(""))
                it.raw = raw
        finally:
            for _, _, out, _ in staged:
                out.close()
    for it in items:  # in order: each stream's link ends at its newest manifest
        assert it.raw is not None
        it.seal.link[0] = hashlib.sha256(it.raw).hexdigest()


def close_files(files: list[tuple[IO[bytes], bool]]) -> None:
    """Close files pushed out of the open set, fsyncing those written since their last fsync."""
    for f, dirty in files:
        if f.closed:  # done by an earlier attempt of this job
            continue
        if dirty:
            os.fsync(f.fileno())
        f.close()


def read_meta(folder: Path) -> dict[str, str]:
    meta = jsonio.loads((folder / "meta.json").read_bytes())
    if not isinstance(meta, dict):
        raise ValueError(f"{folder / 'meta.json'}: not a JSON object")
    return meta
