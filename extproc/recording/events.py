"""Typed recording events. Each carries the session, the exchange, its index within the exchange and a time.

The recorder adds the per-file fields (``seq``, ``prev``) when it writes; see ``recorder.py``.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from extproc.reserved import SYNTHETIC_PREFIX


def body_fields(raw: bytes) -> dict[str, Any]:
    """Raw bytes as JSON-safe fields: text when it is UTF-8, base64 otherwise. Nothing is dropped."""
    try:
        return {"raw": raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {"raw_b64": base64.b64encode(raw).decode()}


def body_bytes(fields: dict[str, Any]) -> bytes:
    """Inverse of ``body_fields``."""
    if "raw_b64" in fields:
        return base64.b64decode(fields["raw_b64"])
    return str(fields.get("raw", "")).encode()


def synthetic_session_id(exchange_id: str) -> str:
    """The recording unit of an exchange no server session covers (refused early, or a stateless server): its own."""
    return SYNTHETIC_PREFIX + exchange_id


def is_synthetic_session(session: str) -> bool:
    return session.startswith(SYNTHETIC_PREFIX)


@dataclass(slots=True, kw_only=True)
class Event:
    """Base: ``type`` names the event; ``session``/``exchange``/``index``/``time`` place it."""

    type: ClassVar[str] = "event"
    session: str = ""
    exchange: str = ""
    index: int = 0
    time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Flat JSON-ready form; ``type`` first so files read naturally."""
        d: dict[str, Any] = {"type": self.type}
        for name in self.__dataclass_fields__:
            d[name] = getattr(self, name)
        return d


@dataclass(slots=True, kw_only=True)
class ExchangeStart(Event):
    type: ClassVar[str] = "exchange.start"
    client: str = ""
    server: str = ""
    backend: str = ""  # which backend of the server the caller was routed to ("" for a single-upstream server)
    method: str = ""
    path: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    credentials_removed: list[str] = field(default_factory=list)
    principal: dict[str, Any] | None = None
    redactions: list[dict[str, Any]] = field(default_factory=list)  # in header values and the path, by rule
    # How much of this exchange's payloads is kept (policy/capture.py): full | redacted | shape | metadata. A
    # tools/call whose tool has a stricter per-tool level says so in its bodies ({"capture": level}).
    capture: str = ""


@dataclass(slots=True, kw_only=True)
class McpRequest(Event):
    """The request body: parsed JSON-RPC messages plus the raw body (or the parse error)."""

    type: ClassVar[str] = "mcp.request"
    messages: list[dict[str, Any]] = field(default_factory=list)
    batch: bool = False
    error: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    redactions: list[dict[str, Any]] = field(default_factory=list)  # which rule redacted what, before storing


@dataclass(slots=True, kw_only=True)
class PolicyDecision(Event):
    """One decision per JSON-RPC request of the body (a batch gets one per element)."""

    type: ClassVar[str] = "policy.decision"
    allowed: bool = False
    rule: str = ""
    reason: str = ""
    call: str = ""
    message_id: str | int | None = None
    kubernetes: dict[str, Any] | None = None  # the SubjectAccessReview the rule required: outcome, reason, cached
    grant: dict[str, Any] | None = None  # the just-in-time grant used: id, reason, approver, until
    definition: dict[str, Any] | None = None  # tools/call, prompts/get, resources/read: the fingerprint last shown
    budget: dict[str, Any] | None = None  # the rule's limits: counter values, or over a limit, or the store down

    approval: dict[str, Any] | None = None  # an approve rule held the call: the request, or the approval it used


@dataclass(slots=True, kw_only=True)
class GuardrailVerdict(Event):
    """What the server's outside guardrail answered for one call (extproc/tools/guardrail.py)."""

    type: ClassVar[str] = "guardrail.verdict"
    message_id: str | int | None = None
    call: str = ""  # as policy.decision names it (redactions applied)
    verdict: str = ""  # allow, deny, modify, error
    reason: str = ""
    latency_ms: float = 0.0
    outcome: str = ""  # what the gateway did: passed, refused, modified, passed (fail open)
    arguments: dict[str, Any] | None = None  # with modify: the arguments the call went on with (redactions applied)
    phase: str = "request"  # asked about the call (request) or about its result (result)
    result: dict[str, Any] | None = None  # with modify of a result: the result the client got (redactions applied)


@dataclass(slots=True, kw_only=True)
class ResultScreened(Event):
    """Invisible characters found in what a call returned (tool-surface screens): where, and what was done. The
    response event keeps what the server sent; with ``action`` strip the client got it without them."""

    type: ClassVar[str] = "result.screened"
    message_id: str | int | None = None
    call: str = ""  # the call whose result it is, as policy.decision names it
    action: str = ""  # strip (removed before the client saw it) or alarm (passed, recorded)
    findings: list[dict[str, Any]] = field(default_factory=list)  # screen, rule, path (in the result), span


@dataclass(slots=True, kw_only=True)
class ListFiltered(Event):
    """A list response rewritten so the caller sees only what it may use; names of what was hidden."""

    type: ClassVar[str] = "policy.list_filtered"
    method: str = ""
    message_id: str | int | None = None
    hidden: list[str] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class ResponseStart(Event):
    type: ClassVar[str] = "http.response"
    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    credentials_removed: list[str] = field(default_factory=list)
    redactions: list[dict[str, Any]] = field(default_factory=list)  # in header values, by rule


@dataclass(slots=True, kw_only=True)
class McpResponse(Event):
    """One response unit: a JSON body, or one SSE event, with its parsed JSON-RPC messages."""

    type: ClassVar[str] = "mcp.response"
    messages: list[dict[str, Any]] = field(default_factory=list)
    sse_event: str | None = None
    sse_id: str | None = None
    error: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    size: int = 0
    redactions: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True, kw_only=True)
class ResponseChunk(Event):
    """Bytes of a response that are not MCP messages (or a truncated SSE tail)."""

    type: ClassVar[str] = "http.chunk"
    body: dict[str, Any] = field(default_factory=dict)
    size: int = 0


Outcome = Literal["complete", "denied", "reset", "error"]  # how an exchange ended


@dataclass(slots=True, kw_only=True)
class ExchangeEnd(Event):
    type: ClassVar[str] = "exchange.end"
    outcome: Outcome = "complete"
    status: int = 0
    duration_ms: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    detail: str = ""
    # Stated by the exchange: the session is over with this exchange (it ended it, the server no longer knows it,
    # or it was a session of one exchange). The recorder then ends the session's stream with a final manifest.
    ends_session: bool = False


@dataclass(slots=True, kw_only=True)
class ExchangeIncomplete(Event):
    """Written by the completer for an exchange whose end was never recorded (its processor was killed).

    It goes into the completer's own stream; the partial log of the exchange stays as it was written.
    """

    type: ClassVar[str] = "exchange.incomplete"
    writer: str = ""  # the stream that holds the exchange's events
    last_seq: int = -1  # the last event of that stream that was saved
    reason: str = "processor stopped before the exchange ended"


@dataclass(slots=True, kw_only=True)
class ToolDefinition(Event):
    """A listed definition (tool, prompt, resource, resource template) as the server sent it, with its RFC 8785
    SHA-256 fingerprint: recorded once per recording unit per fingerprint, so every call's fingerprint can be
    checked offline against the definition the caller was shown (extproc/tools/)."""

    type: ClassVar[str] = "tool.definition"
    server: str = ""
    kind: str = ""  # tool | prompt | resource | resource_template
    name: str = ""
    fingerprint: str = ""
    definition: dict[str, Any] = field(default_factory=dict)
    pin: str = ""  # new | same | changed | rejected | forged (its pin file refused) | unpinned (no signing key)
    shown: bool = True  # False: hidden from the caller (changed, rejected, or a screen)
    findings: list[dict[str, Any]] = field(default_factory=list)  # screen, rule, path, span, and what was done


@dataclass(slots=True, kw_only=True)
class DefinitionChanged(Event):
    """A listed definition differs from its pin: old and new fingerprints and what the policy decided."""

    type: ClassVar[str] = "definition.changed"
    server: str = ""
    kind: str = ""
    name: str = ""
    old: str = ""
    new: str = ""
    decision: str = ""  # alarm | hide | block | rejected
    rule: str = ""  # the integrity entry that decided (file:line) or "default"
