"""Export a time range again from the store: the same fold over stored lines as over chained ones, so a backfilled
event is the event the live export made (same pointer), for exchanges that started in ``[since, until]``."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from extproc.export.ocsf import Fold, Pointer
from extproc.export.proof import Covering
from extproc.recording import chain
from extproc.recording.manifest import Manifest
from extproc.recording.store import Store

log = logging.getLogger(__name__)


def _segments(manifests: list[bytes]) -> list[tuple[int, int, int]]:
    """(first seq, last seq, segment) of each readable manifest."""
    out = []
    for i, raw in enumerate(manifests):
        try:
            m = Manifest.from_bytes(raw)
        except ValueError:
            continue
        out.append((m.first, m.last, i))
    return out


def backfill(
    store: Store, since: float, until: float, fold: Fold | None = None, checkpoints: Covering | None = None
) -> Iterator[dict[str, Any]]:
    """OCSF events of every stored session, one stream at a time, whose time falls in ``[since, until]``.
    ``checkpoints`` (``proof.covering``): fill in each pointer's ``checkpoint`` when the log covers its segment
    by now (the live export could not know it yet; it sent a follow-up ``proofs`` event instead).

    A stream whose hash chain is broken is still exported (the SIEM should see it) with ``proof.chain_ok: false``;
    ``sessions verify`` names what is wrong with it."""
    fold = fold or Fold()
    lo, hi = since * 1000, until * 1000
    for key in store.list_sessions():
        for writer, stream in store.read_session(key).items():
            parsed = chain.read(stream.data)
            ok = not chain.check(writer, parsed)
            if not ok:
                log.warning("backfill: session %s stream %s has a broken chain; exported, marked", key, writer)
            segments = _segments(stream.manifests)
            for ln in parsed.lines:
                ev, seq = ln.event, ln.seq
                if ev is None or seq is None or not isinstance(ev.get("type"), str):
                    continue
                segment = next((i for first, last, i in segments if first <= seq <= last), -1)
                at = Pointer(str(ev.get("session") or key), writer, segment, seq, ln.digest)
                out = fold.feed(ev["type"], ev.get, at)
                if out is None or not lo <= out["time"] <= hi:
                    continue
                proof = out["unmapped"]["proof"]
                if not ok:
                    proof["chain_ok"] = False
                if checkpoints is not None and proof.get("segment", -1) >= 0:
                    proof["checkpoint"] = checkpoints(proof["session"], proof["writer"], proof["segment"])
                yield out
