"""Shared by the evidence tests: a recording made by the processor's own runtime with the transparency log on."""

from __future__ import annotations

from pathlib import Path

from recording_helpers import emit_exchanges

from extproc.evidence.config import TransparencyLogConfig
from extproc.recording.config import Recording
from extproc.recording.manifest import generate_keys
from extproc.recording.setup import build_runtime

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
