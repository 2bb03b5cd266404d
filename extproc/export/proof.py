"""From a proof pointer back to its line: which stream, line and segment of a stored session hash to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from extproc.recording import chain
from extproc.recording.manifest import Manifest
from extproc.recording.store import Store


@dataclass(frozen=True, slots=True)
class Located:
    """The stored line whose SHA-256 a proof pointer names."""

    writer: str
    line: int  # 1-based line of the writer's stream
    seq: int | None
    segment: int | None  # the signed manifest covering it (None: not sealed yet)
    event: dict[str, Any]


def locate(store: Store, key: str, sha256: str) -> Located | None:
    """The line of session ``key`` whose SHA-256 is ``sha256``; None when no stream holds one."""
    want = sha256.strip().lower()
    for writer, stream in store.read_session(key).items():
        for ln in chain.read(stream.data).lines:
            if ln.digest != want or ln.event is None:
                continue
            segment = None
            for i, raw in enumerate(stream.manifests):
                try:
                    m = Manifest.from_bytes(raw)
                except ValueError:
                    continue
                if ln.seq is not None and m.first <= ln.seq <= m.last:
                    segment = i
                    break
            return Located(writer, ln.number, ln.seq, segment, ln.event)
    return None
