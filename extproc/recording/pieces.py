"""What of a response body goes on the record, piece by piece (``mcp/body.py`` cuts the body into pieces).

Each SSE event and each JSON document becomes an ``mcp.response`` (parsed, then redacted by the policy's recording
rules before it is queued); other bytes become an ``http.chunk``; an event or body too big to hold keeps its size
and SHA-256 only. Returns which requests the piece answered, so the exchange knows when its stream is done.
"""

from __future__ import annotations

import json
from hashlib import sha256
from typing import Any

from extproc.mcp.body import Piece
from extproc.mcp.jsonrpc import parse_body
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import redact_for_record
from extproc.recording.events import McpResponse, ResponseChunk, body_fields
from extproc.recording.exchange_log import ExchangeLog


def record_piece(
    log: ExchangeLog, policy: CompiledPolicy | None, server: str, piece: Piece, withheld: str | None = None
) -> set[str]:
    """Record ``piece``; ``withheld``: why raw bytes of this body may not be stored (an oversized JSON body under a
    policy). Returns the JSON-encoded ids of the requests it answered."""
    if piece.event is not None and piece.event.withheld:  # too big to hold: its bytes passed, size + hash kept
        ev = piece.event
        body = {"withheld": ev.withheld, "sha256": ev.sha256}
        log.emit(McpResponse(body=body, size=ev.size, sse_event=ev.event, sse_id=ev.id))
        return set()
    if piece.event is not None:
        parsed = parse_body(piece.event.data.encode()) if piece.event.data else None
        messages = list(parsed.messages) if parsed else []
        error = parsed.error if parsed else None
        sse = {"sse_event": piece.event.event, "sse_id": piece.event.id}
        return _response(log, policy, server, messages, error, piece.raw, keep_raw=error is not None, **sse)
    if piece.document:
        parsed = parse_body(piece.raw)
        return _response(log, policy, server, list(parsed.messages), parsed.error, piece.raw, keep_raw=True)
    _chunk(log, policy, server, piece.raw, withheld)
    return set()


def _response(
    log: ExchangeLog,
    policy: CompiledPolicy | None,
    server: str,
    messages: list[dict[str, Any]],
    error: str | None,
    raw: bytes,
    keep_raw: bool,
    **sse: Any,
) -> set[str]:
    """One mcp.response event, redacted by the policy's recording rules before it is queued."""
    answered = {json.dumps(m["id"]) for m in messages if "id" in m and "method" not in m}
    messages, kept, redactions = redact_for_record(policy, server, messages, raw)
    body = {"raw_redacted": True} if kept is None else (body_fields(kept) if keep_raw else {})
    log.emit(McpResponse(messages=messages, error=error, body=body, size=len(raw), redactions=redactions, **sse))
    return answered


def _chunk(log: ExchangeLog, policy: CompiledPolicy | None, server: str, raw: bytes, withheld: str | None) -> None:
    if withheld is not None:
        # Path and key redactions need the parsed document: an oversized JSON body under a policy is withheld
        # (size and SHA-256 kept), never stored raw.
        log.emit(ResponseChunk(body={"withheld": withheld, "sha256": sha256(raw).hexdigest()}, size=len(raw)))
        return
    _, kept, _ = redact_for_record(policy, server, [], raw)  # text patterns still apply
    log.emit(ResponseChunk(body=body_fields(kept if kept is not None else b""), size=len(raw)))
