"""Recording stores behind one small Protocol: the recorder never knows whether it writes to disk or S3.

The recorder writes to a local spool (``recording/spool.py``); the uploader ships each finished segment,
with its signed manifest, to a store. A store only ever receives whole, immutable segments, in order per stream.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_key(name: str) -> str:
    """A session or writer id as a file/object name: as-is when harmless, else a hash (ids are client-controlled)."""
    if _SAFE.match(name) and ".." not in name:
        return name
    return "h-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class Segment:
    """One finished segment of a writer stream: its JSON lines (uncompressed) and its manifest."""

    session: str
    writer: str
    number: int
    data: bytes
    manifest: bytes
    created: float  # wall-clock time the segment was sealed (S3 keys are dated by it)


@dataclass(slots=True)
class StreamData:
    """One writer's stream as stored: its lines in segment order, and its manifests in segment order."""

    data: bytes = b""
    manifests: list[bytes] = field(default_factory=list)


class Store(Protocol):
    """Where finished segments (and each writer's digests of them) live for good: a local directory or S3."""

    async def put_segment(self, segment: Segment) -> None:
        """Store one segment and then its manifest; idempotent (a retry after an unconfirmed put is safe)."""
        ...

    async def close(self) -> None:
        """Release resources."""
        ...

    def list_sessions(self) -> list[str]:
        """Keys of all recorded sessions."""
        ...

    def read_session(self, session: str) -> dict[str, StreamData]:
        """Every writer's stream of one session, by writer id."""
        ...

    async def put_digest(self, writer: str, number: int, data: bytes) -> None:
        """Store digest ``number`` of a writer's digest chain (``digest.py``) under the store's digest prefix."""
        ...

    def read_digests(self) -> dict[str, dict[int, bytes]]:
        """Every stored digest: writer key -> digest number -> its bytes."""
        ...


@runtime_checkable
class BatchStore(Protocol):
    """A store that takes several segments in one call (the file store: one thread hop for a batch)."""

    async def put_segments(self, segments: list[Segment]) -> tuple[int, Exception | None]:
        """``put_segment`` of each, in order; returns how many were stored and the error that stopped the rest."""
        ...


@runtime_checkable
class BlockingBatchStore(Protocol):
    """A store whose batch put is blocking file work (the file store): the uploader reads the segments from the
    spool and stores them in one thread hop."""

    def put_segments_blocking(self, segments: list[Segment]) -> tuple[int, Exception | None]:
        """``BatchStore.put_segments`` in the calling (worker) thread."""
        ...


async def put_each(store: Store, segments: list[Segment]) -> tuple[int, Exception | None]:
    """``put_segment`` of each segment in order (a store without batches); as ``BatchStore.put_segments``."""
    from extproc.errors import StoreError

    for n, segment in enumerate(segments):
        try:
            await store.put_segment(segment)
        except (StoreError, OSError) as e:
            return n, e
    return len(segments), None


@runtime_checkable
class LocalStore(Protocol):
    """A store on the local disk: its spool defaults to a folder inside it."""

    root: Path
