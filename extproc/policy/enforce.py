"""Applying a compiled policy to whole JSON-RPC bodies: authorize requests, filter list responses, redact records.

Pure functions on plain data (messages, bytes), called by the exchange; nothing here knows about Envoy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from extproc.authn.principal import Principal
from extproc.mcp.jsonrpc import McpCall, Message, is_request, to_call
from extproc.mcp.sse import SseParser
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.engine import Decision, decide_batch, filter_list, redact
from extproc.policy.facts import Facts

LIST_METHODS = frozenset({"tools/list", "resources/list", "prompts/list"})
_ITEM_NAME = {
    "tools/list": ("tools", "name"),
    "resources/list": ("resources", "uri"),
    "prompts/list": ("prompts", "name"),
}


@dataclass(frozen=True, slots=True)
class Verdict:
    """Decisions for every request of a body. One denied request denies the whole body (batch included)."""

    calls: tuple[McpCall, ...]
    decisions: tuple[Decision, ...]

    @property
    def denied(self) -> tuple[McpCall, Decision] | None:
        return next(((c, d) for c, d in zip(self.calls, self.decisions, strict=True) if not d.allowed), None)

    @property
    def lists(self) -> dict[str, str]:
        """JSON-encoded id -> list method, for the list requests whose responses must be filtered."""
        return {json.dumps(c.id): c.method for c in self.calls if c.method in LIST_METHODS and c.id is not None}


def authorize(
    policy: CompiledPolicy, who: Principal, server: str, messages: tuple[Message, ...], facts: Facts | None = None
) -> Verdict:
    """Decide each request/notification of the body; responses the client sends back are not decided."""
    calls = tuple(to_call(m) for m in messages if is_request(m))
    # decide_batch is the one place "one denied element denies the batch" lives; `policy test` runs it too.
    return Verdict(calls, decide_batch(policy, who, server, calls, facts).elements if calls else ())


def filter_body(
    policy: CompiledPolicy,
    who: Principal,
    server: str,
    lists: dict[str, str],
    body: bytes,
    sse: bool,
    facts: Facts | None = None,
) -> tuple[bytes, list[tuple[str, Any, list[str]]]]:
    """Rewrite list results in a whole response body (JSON or SSE); returns the body and what was hidden."""
    hidden: list[tuple[str, Any, list[str]]] = []

    def rewrite(msg: Any) -> Any:
        if isinstance(msg, list):  # a batch of responses
            return [rewrite(m) for m in msg]
        if not isinstance(msg, dict) or not isinstance(msg.get("result"), dict):
            return msg
        method = lists.get(json.dumps(msg.get("id")))
        if method is None:
            return msg
        result = filter_list(policy, who, server, method, msg["result"], facts)
        key, name = _ITEM_NAME[method]
        before = [i.get(name) for i in msg["result"].get(key, []) if isinstance(i, dict)]
        after = {i.get(name) for i in result.get(key, []) if isinstance(i, dict)}
        hidden.append((method, msg.get("id"), [str(n) for n in before if n not in after]))
        return {**msg, "result": result}

    if not sse:
        try:
            doc = json.loads(body)
        except ValueError:
            return body, hidden  # not JSON: nothing we can filter, and nothing to leak from a list
        doc = rewrite(doc)
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode(), hidden

    parser = SseParser()
    out = bytearray()
    for event in parser.feed(body):
        try:
            data = json.dumps(rewrite(json.loads(event.data)), separators=(",", ":"), ensure_ascii=False)
        except ValueError:
            out += event.raw  # not JSON-RPC: passed through as the server sent it
            continue
        if event.event != "message":
            out += f"event: {event.event}\n".encode()
        if event.id is not None:
            out += f"id: {event.id}\n".encode()
        out += f"data: {data}\n\n".encode()
    out += parser.finish()
    return bytes(out), hidden


def redact_for_record(
    policy: CompiledPolicy | None, server: str, messages: list[Message], raw: bytes
) -> tuple[list[Message], bytes | None, list[dict[str, Any]]]:
    """Messages (and raw bytes) as they may be stored. Raw is dropped (None) once anything in it was redacted."""
    if policy is None:
        return messages, raw, []
    if messages:
        redacted, found = redact(policy, server, messages)
    else:  # unparseable body: patterns still apply to its text
        text, found = redact(policy, server, raw.decode("utf-8", "replace"))
        return [], (str(text).encode() if found else raw), [asdict(r) for r in found]
    if not found:
        return messages, raw, []
    return list(redacted), None, [asdict(r) for r in found]  # type: ignore[call-overload]


def redact_text(policy: CompiledPolicy, server: str, text: str) -> str:
    """A short text (a call description, an error detail) with the server's recording patterns applied."""
    redacted, _ = redact(policy, server, text)
    return redacted if isinstance(redacted, str) else text
