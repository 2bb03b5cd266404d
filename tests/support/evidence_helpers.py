"""Shared by the evidence tests: a recording made by the processor's own runtime with the transparency log on."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from recording_helpers import emit_exchanges

from extproc.evidence.config import TransparencyLogConfig
from extproc.evidence.proofs import audit_log, check_checkpoint, log_keys
from extproc.evidence.tiles import Blobs, tile_path, unbundle
from extproc.evidence.tlog import digest_entry, segment_entry
from extproc.recording.config import Recording
from extproc.recording.manifest import generate_keys
from extproc.recording.setup import build_runtime
from extproc.recording.store import Store

ORIGIN = "gw.example/mcp-log"


async def record_logged(root: Path, sessions: dict[str, int], tsa_url: str | None = None) -> tuple[Path, Path]:
    """Record ``sessions`` (id -> exchanges) under ``root/rec`` as a processor does; returns (private, public) key."""
    key, pub = generate_keys(root / "keys")
    rec = Recording(
        directory=root / "rec",
        signing_key=key,
        flush_interval_ms=10,
        transparency_log=TransparencyLogConfig(origin=ORIGIN, checkpoint_interval_s=3600, tsa_url=tsa_url),
    )
    runtime = build_runtime(rec)
    await runtime.start()
    for session, n in sessions.items():
        await emit_exchanges(runtime.recorder, session, n)
    await runtime.close()
    return key, pub


def logged_entries(blobs: Blobs, public: Ed25519PublicKey) -> set[bytes]:
    """Every entry of every log under ``blobs``, each log first audited (its checkpoint signed, its tiles and
    entries hashing to the signed root, earlier checkpoints consistent): what the logs provably hold."""
    found: set[bytes] = set()
    for log in log_keys(blobs):
        assert audit_log(blobs, log, public) == []
        checkpoint = check_checkpoint(blobs, log, public).checkpoint
        assert checkpoint is not None
        for n in range((checkpoint.size + 255) // 256):
            width = min(256, checkpoint.size - n * 256)
            raw = blobs.get(f"{log}/{tile_path('entries', n, width)}") or blobs.get(f"{log}/{tile_path('entries', n)}")
            found.update(unbundle(raw or b"")[:width])
    return found


def stored_entries(store: Store) -> set[bytes]:
    """The entry of every manifest and every digest the store holds (each should be a leaf of some log)."""
    out = {digest_entry(w, n, raw) for w, chain in store.read_digests().items() for n, raw in chain.items()}
    for session in store.list_sessions():
        out |= {segment_entry(m) for stream in store.read_session(session).values() for m in stream.manifests}
    return out
