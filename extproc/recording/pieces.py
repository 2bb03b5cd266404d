"""What of a response body goes on the record, piece by piece (``mcp/body.py`` cuts the body into pieces).

Each SSE event and each JSON document becomes an ``mcp.response`` (parsed, then redacted by the policy's recording
rules before it is queued); other bytes become an ``http.chunk``; an event or body too big to hold keeps its size
and SHA-256 only. Returns which requests the piece answered, so the exchange knows when its stream is done.
"""

from __future__ import annotations

from hashlib import sha256
from typing import Any

from extproc.mcp.body import Piece
from extproc.mcp.jsonrpc import id_text, parse_body
from extproc.policy.capture import Capture
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import redact_for_record
from extproc.recording.events import McpResponse, ResponseChunk, body_fields
from extproc.recording.exchange_log import ExchangeLog

_REDACTED = Capture()


def payload_for_record(
    policy: CompiledPolicy | None,
    server: str,
    capture: Capture,
    messages: list[dict[str, Any]],
    raw: bytes,
    keep_raw: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """Messages, body fields and redactions of one body as stored at ``capture``'s level (policy/capture.py)."""
    if capture.drops_values:
        return capture.messages(messages), capture.body(raw), []
    if capture.level == "full":
        return messages, body_fields(raw) if keep_raw else {}, []
    messages, kept, redactions = redact_for_record(policy, server, messages, raw)
    body = {"raw_redacted": True} if kept is None else (body_fields(kept) if keep_raw else {})
    return messages, body, redactions


def record_piece(
    log: ExchangeLog,
    policy: CompiledPolicy | None,
    server: str,
    piece: Piece,
    withheld: str | None = None,
    capture: Capture = _REDACTED,
) -> set[str]:
    """Record ``piece``; ``withheld``: why raw bytes of this body may not be stored (an oversized JSON body under a
    policy). Returns the JSON-encoded ids of the requests it answered."""
    if piece.event is not None and piece.event.withheld:  # too big to hold: its bytes passed, size + hash kept
        ev = piece.event
        why = str(ev.withheld)
        body = capture.withheld(why) if capture.drops_values else {"withheld": why, "sha256": ev.sha256}
        log.emit(McpResponse(body=body, size=ev.size, sse_event=ev.event, sse_id=ev.id))
        return set()
    if piece.event is not None:
        parsed = parse_body(piece.event.data) if piece.event.data else None  # no copy: orjson reads a str
        messages = list(parsed.messages) if parsed else []
        error = parsed.error if parsed else None
        sse = {"sse_event": piece.event.event, "sse_id": piece.event.id}
        return _response(log, policy, server, capture, messages, error, piece.raw, error is not None, **sse)
    if piece.document:
        parsed = parse_body(piece.raw)
        return _response(log, policy, server, capture, list(parsed.messages), parsed.error, piece.raw, True)
    _chunk(log, policy, server, capture, piece.raw, withheld)
    return set()


def _response(
    log: ExchangeLog,
    policy: CompiledPolicy | None,
    server: str,
    capture: Capture,
    messages: list[dict[str, Any]],
    error: str | None,
    raw: bytes,
    keep_raw: bool,
    **sse: Any,
) -> set[str]:
    """One mcp.response event, redacted by the policy's recording rules (or reduced to its capture level)."""
    answered = {id_text(m["id"]) for m in messages if "id" in m and "method" not in m}
    messages, body, redactions = payload_for_record(policy, server, capture, messages, raw, keep_raw)
    log.emit(McpResponse(messages=messages, error=error, body=body, size=len(raw), redactions=redactions, **sse))
    return answered


def _chunk(
    log: ExchangeLog, policy: CompiledPolicy | None, server: str, capture: Capture, raw: bytes, withheld: str | None
) -> None:
    if capture.drops_values:
        log.emit(ResponseChunk(body=capture.withheld(withheld) if withheld else capture.body(raw), size=len(raw)))
        return
    if capture.level == "full" and withheld is None:
        log.emit(ResponseChunk(body=body_fields(raw), size=len(raw)))
        return
    if withheld is not None:
        # Path and key redactions need the parsed document: an oversized JSON body under a policy is withheld
        # (size and SHA-256 kept), never stored raw.
        log.emit(ResponseChunk(body={"withheld": withheld, "sha256": sha256(raw).hexdigest()}, size=len(raw)))
        return
    _, kept, _ = redact_for_record(policy, server, [], raw)  # text patterns still apply
    log.emit(ResponseChunk(body=body_fields(kept if kept is not None else b""), size=len(raw)))
