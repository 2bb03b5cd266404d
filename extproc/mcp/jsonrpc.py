"""JSON-RPC 2.0 bodies as MCP sends them: one message or a batch; garbage is kept, never dropped."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import orjson

Message = dict[str, Any]


# The HTTP methods of MCP's Streamable HTTP transport: send messages, open the server's stream, end the session.
TRANSPORT_METHODS = ("POST", "GET", "DELETE")


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


# Keys whose meaning the gateway decides on. A server whose JSON decoder matches keys case-insensitively (Go's
# encoding/json, which also folds the long s (U+017F) to 's' and the Kelvin sign to 'k') would read "Params" as
# "params": the gateway must never authorize one spelling while the server executes another.
_DECIDED_KEYS = frozenset({"jsonrpc", "id", "method", "params", "result", "error", "name", "arguments", "uri"})


class AmbiguousJson(ValueError):
    """A key that another JSON decoder could read differently from the gateway."""


def fold_key(key: str) -> str:
    """The spelling a case-insensitive decoder reads: NULs dropped, Unicode case folding (long s to s)."""
    return key.replace("\x00", "").casefold()


class NonFiniteNumber(ValueError):
    """``NaN``, ``Infinity`` or ``-Infinity``: not JSON (RFC 8259), though Python's parser reads them as floats."""


def _refuse_constant(name: str) -> Any:
    """parse_constant: a NaN compares false with every bound, so a ``min``/``max`` condition would let it pass."""
    raise NonFiniteNumber(f"{name} is not a JSON number")


def _strict_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """object_pairs_hook: refuse duplicate keys and keys that fold onto each other (at any depth)."""
    out: dict[str, Any] = {}
    folded: set[str] = set()
    for key, value in pairs:
        if key in out:
            raise AmbiguousJson(f"duplicate key {key[:40]!r}")
        f = fold_key(key)
        if f in folded:
            raise AmbiguousJson(f"key {key[:40]!r} is ambiguous (case or Unicode folding)")
        folded.add(f)
        out[key] = value
    return out


def _check_decided_keys(m: dict[str, Any]) -> None:
    """At the levels the gateway decides on (message, params), a folded spelling of a decided key is refused:
    {"error": {}, "Method": "tools/call"} would pass as a response here and run as a call elsewhere."""
    params = m.get("params")
    for obj in (m, params if isinstance(params, dict) else {}):
        for key in obj:
            f = fold_key(key)
            if f in _DECIDED_KEYS and key != f:
                raise AmbiguousJson(f"key {key[:40]!r} is ambiguous (case or Unicode folding)")


def parse_body(body: bytes | str, strict: bool = False) -> ParsedBody:
    """Parse a JSON-RPC body. Never raises: an unparseable body comes back with ``error`` set.

    ``strict`` (request bodies, which policy decides on) also refuses duplicate and case-folded keys and messages
    whose shape another decoder could read as something else. Otherwise (responses, recorded) orjson reads it.
    """
    if not body.strip():
        return ParsedBody(error="empty body")
    try:
        doc = (
            json.loads(body, object_pairs_hook=_strict_object, parse_constant=_refuse_constant)
            if strict
            else loads(body)
        )
    except AmbiguousJson as e:
        return ParsedBody(error=f"ambiguous JSON: {e}")
    except (ValueError, UnicodeDecodeError) as e:
        return ParsedBody(error=f"not JSON: {e}")
    except RecursionError:
        return ParsedBody(error="not JSON: nested too deeply")
    if strict:
        try:
            for m in doc if isinstance(doc, list) else [doc]:
                if isinstance(m, dict):
                    _check_decided_keys(m)
        except AmbiguousJson as e:
            return ParsedBody(error=f"ambiguous JSON: {e}")
    if isinstance(doc, list):
        if not doc:
            return ParsedBody(error="empty batch")
        if not all(_is_message(m) for m in doc):
            return ParsedBody(error="batch element is not a JSON-RPC 2.0 message")
        if strict and (dup := _duplicate_request_id(doc)) is not None:
            return ParsedBody(error=f"batch repeats request id {dup[:40]}")
        return ParsedBody(messages=tuple(doc), batch=True)
    if not _is_message(doc):
        return ParsedBody(error="not a JSON-RPC 2.0 message")
    return ParsedBody(messages=(doc,))


def loads(body: bytes | str) -> Any:
    """Parse a body a client or server sent: orjson, with the standard parser for what orjson cannot read exactly
    (lone surrogates, integers beyond 64 bits, which orjson reads as floats: a float that large and integral is
    parsed again). ``NaN`` and ``Infinity`` are refused by both (``NonFiniteNumber``, a ValueError)."""
    if isinstance(body, str) and not body.isascii():
        # The standard parser reads a str outside ASCII in place, about twice as fast as orjson (which encodes it
        # to UTF-8 and builds each string again); it is also the exact one, so nothing is checked after it.
        return json.loads(body, parse_constant=_refuse_constant)
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body, parse_constant=_refuse_constant)
    # The walk costs per value, the digit scan per byte (~1.5 ns): a document of few values (an SSE event of one
    # long string) is walked, one of many values scanned, whichever is cheaper (the walk gives up past its budget).
    long = _maybe_long_integer(doc, len(body) >> 6)
    if long is None:
        raw = body if isinstance(body, bytes) else body.encode()
        long = _LONG_RUN in raw.translate(_DIGITS) and bool(_maybe_long_integer(doc))
    return json.loads(body, parse_constant=_refuse_constant) if long else doc


# Digits to "0", every other byte to " ": an integer literal of magnitude 2**63 or more has at least 19 digits in a
# row. (A float written with an exponent, which the walk also flags, parses to the same float either way.)
_DIGITS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_RUN = b"0" * 19


def _maybe_long_integer(doc: Any, budget: int = -1) -> bool | None:
    """True if ``doc`` holds a float that may have been an integer beyond 64 bits (work per value, not per byte);
    None once ``budget`` values were looked at without an answer (-1: no budget)."""
    stack = [doc]
    while stack:
        if budget == 0:
            return None
        budget -= 1
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, float) and abs(v) >= 9.2e18 and v.is_integer():
            return True
    return False


def _duplicate_request_id(batch: list[Message]) -> str | None:
    """The first request id used twice in a batch (JSON-encoded), else None.

    Responses are matched to requests by id, and so is list filtering: two requests with one id make "the
    response to id 1" ambiguous. Numbers compare by value (1 and 1.0 are one id to most decoders).
    """
    seen: set[object] = set()
    for m in batch:
        if not is_request(m) or "id" not in m:
            continue
        i = m["id"]
        key: tuple[str, object] = ("j", json.dumps(i))
        if isinstance(i, float) and i.is_integer():
            key = ("j", json.dumps(int(i)))
        if key in seen:
            return json.dumps(i)
        seen.add(key)
    return None


def _is_message(m: object) -> bool:
    """A JSON-RPC 2.0 request/notification (string method, no result/error) or response (result or error)."""
    if not isinstance(m, dict) or m.get("jsonrpc") != "2.0":
        return False
    if "method" in m:
        return isinstance(m["method"], str) and "result" not in m and "error" not in m
    return "result" in m or "error" in m


def id_text(msg_id: Any) -> str:
    """A message id as JSON text (``json.dumps``), what pairs a response with its request: an integer id, the
    common case, without the encoder."""
    if type(msg_id) is int:
        return str(msg_id)  # json.dumps of an int (never a bool: type() is exact) is its decimal text
    return json.dumps(msg_id)


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
