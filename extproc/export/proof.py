"""From a proof pointer back to its line: which stream, line and segment of a stored session hash to it; and the
follow-up OCSF event that brings a pointer its checkpoint."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from extproc.export.ocsf import _classification, _metadata
from extproc.recording import chain, jsonio
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


Covering = Callable[[str, str, int], dict[str, Any] | None]


def covering(store: Store) -> Covering:
    """For a backfill: ``(session, writer, segment) -> {log, size, leaf_index}`` of the checkpoint of the store's
    transparency log that covers that stored segment (None: no log, or no checkpoint covers it yet). Read, not
    verified: ``sessions verify --event`` proves the inclusion."""
    from extproc.evidence.tiles import blobs_for
    from extproc.evidence.tlog import CHECKPOINT
    from extproc.recording.store import safe_key

    try:
        blobs = blobs_for(store)
    except TypeError:  # a store kind with no log storage
        return lambda session, writer, segment: None
    heads: dict[str, tuple[str, int]] = {}  # log key -> (origin, size) of its current checkpoint
    for key in blobs.list(""):
        lines = (blobs.get(f"{key}/{CHECKPOINT}") or b"").decode(errors="replace").split("\n")
        if len(lines) > 2 and lines[1].isdigit():
            heads[key] = (lines[0], int(lines[1]))
    leaves: dict[str, dict[tuple[str, int], tuple[str, int]]] = {}  # session -> (stream, segment) -> (log, leaf)

    def lookup(session: str, writer: str, segment: int) -> dict[str, Any] | None:
        if not heads:
            return None
        known = leaves.get(session)
        if known is None:
            known = leaves[session] = {}
            for key in heads:
                for name in blobs.list(f"{key}/where/{safe_key(session)}"):
                    raw = blobs.get(f"{key}/where/{safe_key(session)}/{name}") if name.isdigit() else None
                    try:
                        for index, stream, seg in jsonio.loads(raw)["leaves"] if raw else []:
                            known.setdefault((str(stream), int(seg)), (key, int(index)))
                    except (ValueError, TypeError, KeyError):
                        continue  # an edited index: the segment shows as not covered; verify says why
        found = known.get((safe_key(writer), segment))
        if found is None or found[1] >= heads[found[0]][1]:
            return None
        origin, size = heads[found[0]]
        return {"log": origin, "size": size, "leaf_index": found[1]}

    return lookup


def checkpoint_event(
    origin: str, size: int, session: str, stream: str, segment: int, index: int, now: float
) -> dict[str, Any]:
    """The follow-up of the exchange events of one segment: a transparency-log checkpoint now covers it."""
    checkpoint = {"log": origin, "size": size, "leaf_index": index}
    return {
        **_classification(99),
        "severity_id": 1,
        "severity": "Informational",
        "time": int(now * 1000),
        "status_id": 1,
        "status": "Success",
        "message": f"segment {segment} of session {session} (writer {stream}) is in checkpoint {size} of log {origin}",
        "metadata": _metadata(f"{session}/{stream}/{segment}", session, "proofs", []),
        "actor": {"app_name": "mcp-extproc"},
        "api": {"operation": "evidence/checkpoint", "service": {"name": "transparency-log"}},
        "src_endpoint": {"svc_name": "mcp-extproc"},
        "unmapped": {
            "proof": {
                "session": session,
                "writer": stream,
                "segment": segment,
                "checkpoint": checkpoint,
                "verify": f"mcp-extproc sessions verify {session} --event <sha256 of a pointer of this segment>",
                "prove": f"mcp-extproc evidence prove {session}",
            }
        },
    }
