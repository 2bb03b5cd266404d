"""The spool's files and records: what goes in (appends, seals), what comes out (sealed segments), and the blocking
helpers that run in its worker threads. ``spool.py`` owns the folder and the order of things."""

from __future__ import annotations

import hashlib
import os
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
