"""Reading the logs back: checkpoints, inclusion proofs for a session's segments, consistency between checkpoints.

Everything here needs only the tiles (``Blobs``), a checkpoint and the public key: no processor, no database. A
proof computed from the tiles is checked against the root the checkpoint signs, so a tile that was edited gives a
proof that fails, never a false success. ``prove_session`` also rebuilds each leaf's entry from the manifest the
store holds, so the proof is about the segment on record, not about whatever the log says.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.evidence import merkle
from extproc.evidence.note import Checkpoint, NoteError, Verifier, open_checkpoint, split_note
from extproc.evidence.tiles import Blobs, MissingTile, TileHashes, tile_path, unbundle
from extproc.evidence.tlog import CHECKPOINT, HISTORY, TOKEN, segment_entry, where_path
from extproc.recording import jsonio
from extproc.recording.store import Store, safe_key


def verifier_for(note: bytes | str, public: Ed25519PublicKey) -> Verifier:
    """The verifier of ``public`` under the key name a signature line of ``note`` uses (the key ID binds both)."""
    _, sigs = split_note(note)
    for s in sigs:
        try:
            v = Verifier(s.name, public)
        except NoteError:
            continue
        if v.id == s.id:
            return v
    raise NoteError("no signature on the checkpoint is by the given public key")


def log_keys(blobs: Blobs) -> list[str]:
    """Every log in the folder (one per writer) that has published a checkpoint."""
    return [k for k in blobs.list("") if blobs.get(f"{k}/{CHECKPOINT}") is not None]


@dataclass(slots=True)
class CheckedCheckpoint:
    log: str
    checkpoint: Checkpoint | None
    note: bytes
    problems: list[str] = field(default_factory=list)
    token: bytes | None = None


def check_checkpoint(blobs: Blobs, log: str, public: Ed25519PublicKey, note: bytes | None = None) -> CheckedCheckpoint:
    """The log's checkpoint (or ``note``): signature, and the root recomputed from the tiles."""
    raw = note if note is not None else blobs.get(f"{log}/{CHECKPOINT}") or b""
    out = CheckedCheckpoint(log, None, raw)
    try:
        cp = out.checkpoint = open_checkpoint(raw, verifier_for(raw, public))
    except NoteError as e:
        out.problems.append(str(e))
        return out
    try:
        root = merkle.subtree(TileHashes(blobs, log, cp.size), 0, cp.size)
    except MissingTile as e:
        out.problems.append(f"tiles: {e}")
        return out
    if root != cp.root:
        out.problems.append(f"the tiles give root {root.hex()}, the checkpoint signs {cp.root.hex()}")
    token_path = f"{log}/{TOKEN}" if note is None else f"{log}/{HISTORY}/{cp.size:012d}.tsr"
    out.token = blobs.get(token_path) or None  # empty: the TSA failed for this checkpoint
    return out


@dataclass(slots=True)
class SegmentProof:
    stream: str
    segment: int
    log: str = ""
    index: int = -1
    size: int = 0
    entry: bytes = b""
    proof: list[bytes] = field(default_factory=list)
    problem: str = ""

    def doc(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "segment": self.segment,
            "log": self.log,
            "index": self.index,
            "size": self.size,
            "entry": self.entry.decode(),
            "proof": [base64.b64encode(p).decode() for p in self.proof],
            "problem": self.problem,
        }


@dataclass(slots=True)
class SessionProof:
    session: str
    segments: list[SegmentProof]
    checkpoints: dict[str, bytes]

    @property
    def ok(self) -> bool:
        return bool(self.segments) and not any(s.problem for s in self.segments)

    def bundle(self) -> dict[str, Any]:
        """What `evidence verify` checks offline: the checkpoints and every leaf with its proof."""
        return {
            "session": self.session,
            "checkpoints": {k: v.decode() for k, v in self.checkpoints.items()},
            "segments": [s.doc() for s in self.segments],
        }


def prove_session(store: Store, blobs: Blobs, session: str, public: Ed25519PublicKey) -> SessionProof:
    """An inclusion proof, against its log's latest checkpoint, for every stored segment of ``session``."""
    leaves: dict[tuple[str, int], tuple[str, int]] = {}  # (stream key, segment) -> (log, leaf index)
    for log in blobs.list(""):
        for name in blobs.list(f"{log}/where/{safe_key(session)}"):
            raw = blobs.get(where_path(log, session, int(name))) if name.isdigit() else None
            try:
                listed = [(int(i), str(st), int(sg)) for i, st, sg in jsonio.loads(raw)["leaves"]] if raw else []
            except (ValueError, TypeError, KeyError):  # an edited index: its segments show as "not in any log"
                listed = []
            for index, stream, segment in listed:
                leaves.setdefault((stream, segment), (log, index))
    trees: dict[str, tuple[Checkpoint, TileHashes] | str] = {}
    out = SessionProof(session, [], {})
    for stream_key, data in sorted(store.read_session(session).items()):
        for raw in data.manifests:
            try:
                entry = segment_entry(raw)
            except ValueError as e:
                out.segments.append(SegmentProof(stream_key, -1, problem=f"unreadable manifest: {e}"))
                continue
            doc = jsonio.loads(entry)
            item = SegmentProof(doc["stream"], doc["segment"], entry=entry)
            out.segments.append(item)
            found = leaves.get((doc["stream"], doc["segment"]))
            if found is None:
                item.problem = "not in any log (not yet checkpointed, or never logged)"
                continue
            item.log, item.index = found
            tree = trees.get(item.log)
            if tree is None:
                tree = trees[item.log] = _tree(blobs, item.log, public, out.checkpoints)
            if isinstance(tree, str):
                item.problem = tree
                continue
            cp, hashes = tree
            item.size = cp.size
            if item.index >= cp.size:
                item.problem = f"leaf {item.index} is past the log's checkpoint (size {cp.size})"
                continue
            try:
                item.proof = merkle.inclusion_proof(hashes, item.index, cp.size)
            except MissingTile as e:
                item.problem = f"tiles: {e}"
                continue
            if not merkle.verify_inclusion(item.index, cp.size, merkle.leaf_hash(entry), item.proof, cp.root):
                item.problem = "inclusion proof does not lead to the checkpoint's root (log or manifest edited)"
    return out


def _tree(
    blobs: Blobs, log: str, public: Ed25519PublicKey, seen: dict[str, bytes]
) -> tuple[Checkpoint, TileHashes] | str:
    note = blobs.get(f"{log}/{CHECKPOINT}")
    if note is None:
        return f"log {log} has no checkpoint"
    try:
        cp = open_checkpoint(note, verifier_for(note, public))
    except NoteError as e:
        return f"checkpoint of log {log}: {e}"
    seen[log] = note
    return cp, TileHashes(blobs, log, cp.size)


def verify_bundle(bundle: dict[str, Any], public: Ed25519PublicKey) -> list[str]:
    """Problems with a bundle written by ``prove``: checked from the bundle and the key alone."""
    problems: list[str] = []
    checkpoints: dict[str, Checkpoint] = {}
    notes = bundle.get("checkpoints")
    for log, note in notes.items() if isinstance(notes, dict) else []:
        try:
            checkpoints[log] = open_checkpoint(note, verifier_for(note, public))
        except NoteError as e:
            problems.append(f"checkpoint of log {log}: {e}")
    segments = bundle.get("segments", [])
    if not segments:
        problems.append("the bundle proves no segment")
    for s in segments if isinstance(segments, list) else [None]:
        if not isinstance(s, dict):
            problems.append("the bundle's segments are not a list of objects")
            continue
        what = f"segment {s.get('segment')} of stream {s.get('stream')}"
        cp = checkpoints.get(str(s.get("log", "")))
        if cp is None:
            problems.append(f"{what}: {s.get('problem') or 'no verified checkpoint for its log'}")
            continue
        try:
            entry = str(s["entry"]).encode()
            proof = [base64.b64decode(p, validate=True) for p in s["proof"]]
            index, size = int(s["index"]), int(s["size"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"{what}: malformed (entry, proof, index and size are needed)")
            continue
        if size != cp.size or not merkle.verify_inclusion(index, cp.size, merkle.leaf_hash(entry), proof, cp.root):
            problems.append(f"{what}: inclusion proof fails against the checkpoint of {cp.origin}")
    return problems


@dataclass(slots=True)
class Consistency:
    old: Checkpoint
    new: Checkpoint
    proof: list[bytes]
    ok: bool


def prove_consistency(blobs: Blobs, log: str, old: Checkpoint, new: Checkpoint) -> Consistency:
    """The consistency proof from ``old`` to ``new`` computed from the log's tiles (as of ``new``), and verified."""
    if old.origin != new.origin:
        raise NoteError(f"checkpoints of two logs: {old.origin!r} and {new.origin!r}")
    if old.size > new.size:
        return Consistency(old, new, [], False)  # the log shrank: it was rewritten
    proof = merkle.consistency_proof(TileHashes(blobs, log, new.size), old.size, new.size)
    return Consistency(old, new, proof, merkle.verify_consistency(old.size, new.size, old.root, new.root, proof))


def log_of(blobs: Blobs, origin: str) -> str:
    """The log folder whose checkpoints carry ``origin``."""
    for key in blobs.list(""):
        note = blobs.get(f"{key}/{CHECKPOINT}")
        if note is not None and note.split(b"\n", 1)[0].decode(errors="replace") == origin:
            return key
    raise KeyError(origin)


def audit_log(blobs: Blobs, log: str, public: Ed25519PublicKey, store: Store | None = None) -> list[str]:
    """Everything a monitor checks in one log, beyond its latest checkpoint: every earlier checkpoint it published
    is consistent with the latest, every entry hashes to its leaf, and (with ``store``) every logged segment is
    still stored, unchanged. A session deleted from the store, or a manifest edited there, is named here."""
    checked = check_checkpoint(blobs, log, public)
    if checked.checkpoint is None or checked.problems:
        return checked.problems
    latest = checked.checkpoint
    problems: list[str] = []
    for name in blobs.list(f"{log}/{HISTORY}"):
        if not name.isdigit():
            continue
        note = blobs.get(f"{log}/{HISTORY}/{name}") or b""
        try:
            old = open_checkpoint(note, verifier_for(note, public), latest.origin)
            ok = prove_consistency(blobs, log, old, latest).ok
        except (NoteError, MissingTile) as e:
            problems.append(f"checkpoint {name}: {e}")
            continue
        if not ok:
            problems.append(f"checkpoint of size {old.size} is not consistent with the latest (log rewritten)")
    hashes = TileHashes(blobs, log, latest.size)
    logged: dict[str, dict[tuple[str, int], str]] = {}  # session key -> (stream, segment) -> manifest SHA-256
    index = 0
    for n in range((latest.size + 255) // 256):
        width = min(256, latest.size - n * 256)
        raw = blobs.get(f"{log}/{tile_path('entries', n, width)}")
        if raw is None and width < 256:
            raw = blobs.get(f"{log}/{tile_path('entries', n)}")
        try:
            entries = unbundle(raw)[:width] if raw is not None else []
        except ValueError as e:
            problems.append(f"entry bundle {n}: {e}")
            entries = []
        if len(entries) != width:
            problems.append(f"entry bundle {n}: {len(entries)} entries, the checkpoint needs {width}")
            index = (n + 1) * 256
            continue
        for entry in entries:
            if merkle.leaf_hash(entry) != hashes.hash_at(0, index):
                problems.append(f"entry {index} does not hash to its leaf (entry bundle edited)")
            else:
                try:
                    doc = jsonio.loads(entry)
                except ValueError:
                    doc = {}  # not an entry this gateway writes; its hash is all that is checked
                if isinstance(doc, dict) and doc.get("kind") == "segment":
                    logged.setdefault(doc["session"], {})[doc["stream"], doc["segment"]] = doc["manifest"]
            index += 1
    if store is not None:
        problems += _missing_from_store(store, logged)
    return problems


def _missing_from_store(store: Store, logged: dict[str, dict[tuple[str, int], str]]) -> list[str]:
    import hashlib

    problems: list[str] = []
    stored_sessions = set(store.list_sessions())
    for session, segments in sorted(logged.items()):
        if session not in stored_sessions:
            problems.append(f"session {session!r}: {len(segments)} logged segments, none stored (deleted)")
            continue
        stored: dict[tuple[str, int], str] = {}
        for data in store.read_session(session).values():
            for raw in data.manifests:
                try:
                    m = jsonio.loads(raw)
                    stored[safe_key(m["writer"]), int(m["segment"])] = hashlib.sha256(raw).hexdigest()
                except (ValueError, KeyError, TypeError):
                    continue
        for (stream, segment), digest in sorted(segments.items()):
            found = stored.get((stream, segment))
            if found is None:
                problems.append(
                    f"session {session!r}: segment {segment} of stream {stream} logged, not stored (deleted)"
                )
            elif found != digest:
                problems.append(
                    f"session {session!r}: segment {segment} of stream {stream}: manifest edited since logged"
                )
    return problems
