"""JSON-RPC 2.0 bodies as MCP sends them: one message or a batch; garbage is kept, never dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ParsedBody:
    """The messages of one body. ``error`` is set (and ``messages`` empty) when the body is not JSON-RPC."""

    messages: tuple[Message, ...] = ()
    batch: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class McpCall:
    """One JSON-RPC request or notification, reduced to what authorization and recording need."""

    method: str
    id: str | int | None = None
    tool: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    uri: str | None = None
    prompt: str | None = None

    @property
    def is_notification(self) -> bool:
        return self.id is None


def parse_body(body: bytes) -> ParsedBody:
    """Parse a JSON-RPC body. Never raises: an unparseable body comes back with ``error`` set."""
    if not body.strip():
        return ParsedBody(error="empty body")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        return ParsedBody(error=f"not JSON: {e}")
    if isinstance(doc, list):
        if not doc:
            return ParsedBody(error="empty batch")
        if not all(_is_message(m) for m in doc):
            return ParsedBody(error="batch element is not a JSON-RPC 2.0 message")
        return ParsedBody(messages=tuple(doc), batch=True)
    if not _is_message(doc):
        return ParsedBody(error="not a JSON-RPC 2.0 message")
    return ParsedBody(messages=(doc,))


def _is_message(m: object) -> bool:
    return isinstance(m, dict) and m.get("jsonrpc") == "2.0" and ("method" in m or "result" in m or "error" in m)


def is_request(m: Message) -> bool:
    """A request or notification (has a method), as opposed to a response."""
    return isinstance(m.get("method"), str)


def to_call(m: Message) -> McpCall:
    """Reduce a request/notification message to an McpCall; odd params shapes become empty fields."""
    method = m["method"]
    params = m.get("params")
    if not isinstance(params, dict):
        params = {}
    name = params.get("name") if isinstance(params.get("name"), str) else None
    args = params.get("arguments")
    return McpCall(
        method=method,
        id=m.get("id"),
        tool=name if method == "tools/call" else None,
        arguments=args if isinstance(args, dict) and method == "tools/call" else {},
        uri=params.get("uri") if isinstance(params.get("uri"), str) else None,
        prompt=name if method == "prompts/get" else None,
    )


def error_response(msg_id: str | int | None, code: int, message: str, data: Any = None) -> Message:
    """A JSON-RPC error response to ``msg_id``."""
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": msg_id, "error": err}
