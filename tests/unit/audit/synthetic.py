"""Synthetic recordings written the way the recorder writes them (chained lines, signed manifests)."""

from __future__ import annotations

import hashlib
from typing import Any

from extproc.recording.chain import chain_line
from extproc.recording.manifest import GENESIS, Manifest, Signer
from extproc.recording.store import Segment


def session_segments(
    key: str,
    *,
    server: str,
    user: str,
    started: float,
    tools: tuple[str, ...] = ("echo",),
    writer: str = "w1",
    final: bool = True,
    signer: Signer | None = None,
    issuer: str = "https://issuer.test",
    denied: tuple[str, ...] = (),
) -> list[Segment]:
    """One exchange per tool call, all in one segment; optionally the stream's final manifest. A call of a tool
    in ``denied`` is refused by the gateway (rule ``no-<tool>``, 403, no upstream response)."""
    events: list[dict[str, Any]] = []
    t = started
    for n, tool in enumerate(tools):
        ex = f"ex{n}"
        principal = {"issuer": issuer, "subject": user, "username": user, "groups": [], "token_id": "t"}
        events += [
            {"type": "exchange.start", "session": key, "exchange": ex, "index": 0, "time": t, "server": server,
             "method": "POST", "path": f"/{server}/mcp", "principal": principal},
            {"type": "mcp.request", "session": key, "exchange": ex, "index": 1, "time": t + 0.01,
             "messages": [{"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": tool}}]},
        ]  # fmt: skip
        if tool in denied:
            events += [
                {"type": "policy.decision", "session": key, "exchange": ex, "index": 2, "time": t + 0.01,
                 "allowed": False, "rule": f"no-{tool}", "reason": "denied", "message_id": n},
                {"type": "exchange.end", "session": key, "exchange": ex, "index": 3, "time": t + 0.02,
                 "outcome": "denied", "status": 403, "duration_ms": 1.0,
                 "detail": f"denied by policy rule 'no-{tool}': tools/call {tool}"},
            ]  # fmt: skip
        else:
            events += [
                {"type": "policy.decision", "session": key, "exchange": ex, "index": 2, "time": t + 0.01,
                 "allowed": True, "rule": "allow-all"},
                {"type": "exchange.end", "session": key, "exchange": ex, "index": 3, "time": t + 0.02,
                 "outcome": "complete", "status": 200, "duration_ms": 10.0},
            ]  # fmt: skip
        t += 0.1
    prev, lines = GENESIS, []
    for seq, ev in enumerate(events):
        line = chain_line(seq, prev, ev)
        prev = hashlib.sha256(line).hexdigest()
        lines.append(line + b"\n")
    data = b"".join(lines)
    manifest = Manifest(key, writer, 0, 0, len(events) - 1, len(events), len(data), hashlib.sha256(data).hexdigest(),
                        prev, GENESIS, final=final, created=t)  # fmt: skip
    (signer or Signer(None)).sign(manifest)
    return [Segment(key, writer, 0, data, manifest.to_bytes(), t)]
