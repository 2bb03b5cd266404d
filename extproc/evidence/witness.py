"""A witness: follows the logs through the audit API and refuses any checkpoint that does not extend the one it kept.

Each run fetches every log's checkpoint, checks its signature, fetches the hash tiles the new size needs (tiles are
immutable: only new ones), recomputes the root, and proves consistency from the checkpoint it kept last time. Only
then does it keep the new one. A log that was rewritten (even re-signed with the same key) is reported and its
checkpoint kept aside as ``checkpoint.rejected``: the evidence of the split view.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.evidence import merkle
from extproc.evidence.note import Checkpoint, NoteError, open_checkpoint
from extproc.evidence.proofs import prove_consistency, verifier_for
from extproc.evidence.tiles import HEIGHT, Blobs, MissingTile, TileHashes, tile_path, tile_width
from extproc.evidence.tlog import CHECKPOINT, HISTORY, TOKEN

Fetch = Callable[[str], bytes | None]  # a log path (``""``: the list of logs) -> its bytes, None if not found


def needed_tiles(size: int) -> Iterator[str]:
    """Every hash tile path of the tree of ``size`` (full and partial), lowest level first."""
    level = 0
    while size >> (HEIGHT * level):
        count = size >> (HEIGHT * level)
        for n in range((count + 255) // 256):
            if width := tile_width(level, n, size):
                yield tile_path(level, n, width)
        level += 1


@dataclass(slots=True)
class Followed:
    log: str
    old: Checkpoint | None = None
    new: Checkpoint | None = None
    fetched: int = 0
    problems: list[str] = field(default_factory=list)


def follow(fetch: Fetch, mirror: Blobs, public: Ed25519PublicKey) -> list[Followed]:
    """One witness round over every log the API lists; the mirror keeps checkpoints and tiles between rounds."""
    listing = fetch("")
    logs = json.loads(listing)["logs"] if listing else []
    return [_follow_one(fetch, mirror, public, str(log)) for log in logs]


def _follow_one(fetch: Fetch, mirror: Blobs, public: Ed25519PublicKey, log: str) -> Followed:
    out = Followed(log)
    note = fetch(f"{log}/{CHECKPOINT}")
    if note is None:
        out.problems.append("no checkpoint served")
        return out
    try:
        new = out.new = open_checkpoint(note, verifier_for(note, public))
        kept = mirror.get(f"{log}/{CHECKPOINT}")
        out.old = open_checkpoint(kept, verifier_for(kept, public), new.origin) if kept else None
    except NoteError as e:
        out.problems.append(f"checkpoint: {e}")
        return out
    for path in needed_tiles(new.size):
        if mirror.get(f"{log}/{path}") is None:
            data = fetch(f"{log}/{path}")
            if data is None:
                out.problems.append(f"tile {path} not served")
                return out
            mirror.put(f"{log}/{path}", data)
            out.fetched += 1
    try:
        tiles: Blobs = mirror
        root = merkle.subtree(TileHashes(tiles, log, new.size), 0, new.size)
        if root != new.root:
            # Full tiles are immutable, so the mirror kept them. If the log now serves other bytes at their paths
            # and those give the new root, the log rewrote what this witness saw: the consistency proof over the
            # tiles as served now shows it.
            tiles = _Fresh(fetch)
            root = merkle.subtree(TileHashes(tiles, log, new.size), 0, new.size)
        consistent = out.old is None or prove_consistency(tiles, log, out.old, new).ok
    except MissingTile as e:
        out.problems.append(f"tiles: {e}")
        return out
    if root != new.root:
        out.problems.append("the tiles served do not give the checkpoint's root")
    elif not consistent or tiles is not mirror:
        mirror.put(f"{log}/checkpoint.rejected", note)
        out.problems.append(
            f"INCONSISTENT: size {out.old.size if out.old else 0} -> {new.size}: the log was rewritten since the "
            "checkpoint this witness kept (the new one is kept as checkpoint.rejected)"
        )
    else:
        token = fetch(f"{log}/{TOKEN}")
        mirror.put(f"{log}/{HISTORY}/{new.size:012d}", note)
        if token:
            mirror.put(f"{log}/{HISTORY}/{new.size:012d}.tsr", token)
        mirror.put(f"{log}/{CHECKPOINT}", note)
    return out


class _Fresh:
    """Tiles fetched anew, in memory (the mirror's copies are never overwritten: they are the evidence)."""

    def __init__(self, fetch: Fetch) -> None:
        self._fetch = fetch
        self._got: dict[str, bytes | None] = {}

    def put(self, path: str, data: bytes) -> None:
        self._got[path] = data

    def get(self, path: str) -> bytes | None:
        if path not in self._got:
            self._got[path] = self._fetch(path)
        return self._got[path]

    def list(self, folder: str) -> list[str]:
        return []
