"""The exchange's side of a server's outside guardrail (extproc/tools/guardrail.py asks it).

After the policy allowed a body, each call in it that the server's guardrail wants (tools/call by default) is
asked about, all at once; every answer is recorded (``guardrail.verdict``) before anything else happens. One deny
refuses the body (403), as one policy denial does; an error refuses it too (503) unless the guardrail fails open.
A modify replaces the call's arguments: the changed body is then decided by the policy again (phases.py), so what
the server executes is what the policy decided on.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

from extproc.authn.principal import Principal
from extproc.errors import GatewayError, GuardrailDenied, GuardrailUnavailable
from extproc.exchange.decide import CallKey, call_key, describe
from extproc.gateway import Gateway
from extproc.mcp.body import Piece, Screen, dumps, rewrite_json, rewrite_sse
from extproc.mcp.jsonrpc import McpCall, Message, error_response, is_request, loads, to_call
from extproc.mcp.sse import SseEvent, format_event
from extproc.policy.capture import Capture
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import redact_for_record, redact_text
from extproc.recording.events import GuardrailVerdict
from extproc.recording.exchange_log import ExchangeLog


async def ask(
    gw: Gateway,
    log: ExchangeLog,
    policy: CompiledPolicy,
    who: Principal | None,
    where: tuple[str, str],
    ids: tuple[str, str],
    messages: tuple[Message, ...],
    shown: dict[CallKey, dict[str, Any]],
) -> tuple[GatewayError | None, list[Message] | None]:
    """(the refusal, or None; the body's messages with the guardrail's arguments when it modified a call).

    ``where``: server and backend; ``ids``: the exchange id and Envoy's request id; ``shown``: per call
    (``call_key``), the definition the caller was last shown."""
    guards, (server, backend) = gw.guardrails, where
    if guards is None:
        return None, None
    asked = [(i, m) for i, m in enumerate(messages) if is_request(m) and guards.asks(server, str(m.get("method")))]
    if not asked:
        return None, None
    who_doc = _who(who)
    calls = [to_call(m) for _, m in asked]
    questions = [
        {"version": 1, "phase": "request", "exchange": ids[0], "request_id": ids[1], "who": who_doc,
         "server": server, "backend": backend, "method": c.method, "name": c.tool or c.prompt or c.uri,
         "arguments": c.arguments, "definition": shown.get(call_key(c))}
        for c in calls
    ]  # fmt: skip
    answers = await asyncio.gather(*(guards.ask(server, q) for q in questions))
    refusal: GatewayError | None = None
    changed: list[Message] | None = None
    for (i, m), c, a in zip(asked, calls, answers, strict=True):
        gw.metrics.guardrail_seconds.labels(server, a.verdict).observe(a.latency_ms / 1000)
        what = describe(policy, server, c)
        verdict, reason = a.verdict, a.reason
        if verdict == "modify" and c.method == "resources/read":
            verdict, reason = "error", "modify of a resources/read (it has no arguments)"
        if verdict == "deny":
            outcome = "refused"
            refusal = refusal or GuardrailDenied(what, redact_text(policy, server, reason))
        elif verdict == "error" and not guards.fails_open(server):
            outcome = "refused"
            refusal = refusal or GuardrailUnavailable(reason)
        elif verdict == "modify":
            outcome = "modified"
            changed = changed if changed is not None else list(messages)
            changed[i] = _with_arguments(m, a.arguments or {})
        else:
            outcome = "passed (fail open)" if verdict == "error" else "passed"
        capture = Capture(policy.capture(server, [c.tool] if c.tool else ()), gw.options.capture_salt)
        recorded = _recorded_arguments(policy, server, changed[i], capture) if verdict == "modify" and changed else None
        reason = capture.leaf(reason) if capture.drops_values else redact_text(policy, server, reason)
        log.emit(
            GuardrailVerdict(message_id=c.id, call=what, verdict=verdict, reason=reason,
                             latency_ms=round(a.latency_ms, 3), outcome=outcome, arguments=recorded)
        )  # fmt: skip
    return refusal, (changed if refusal is None else None)


def _with_arguments(m: Message, arguments: dict[str, Any]) -> Message:
    out = copy.deepcopy(m)
    out.setdefault("params", {})["arguments"] = arguments
    return out


def _recorded_arguments(policy: CompiledPolicy, server: str, m: Message, capture: Capture) -> dict[str, Any] | None:
    """The modified call's arguments as the recording keeps a request: at the call's capture level (shape: their
    shape, metadata: none, full: as they are), else with the server's redactions applied."""
    if capture.drops_values or capture.level == "full":
        kept = capture.message(m) if capture.drops_values else m
        arguments = (kept.get("params") or {}).get("arguments")
        return arguments if isinstance(arguments, dict) else None
    (redacted,), _, _ = redact_for_record(policy, server, [m], b"")
    arguments = redacted.get("params", {}).get("arguments")
    return arguments if isinstance(arguments, dict) else None


def _same(message: Message) -> Message:
    return message


def _never(raw: bytes) -> bool:
    return False


def _always(raw: bytes) -> bool:
    return True


# Turns on releasing an SSE body a complete event at a time (mcp/body.py SseRewriter) without rewriting any.
HOLD_EVENTS: Screen = (_same, _never)


class ResultGuard:
    """The guardrail asked about the results of one exchange's calls (``servers[].guardrail.results``) before the
    client gets them. A JSON body is buffered whole (phases.py frames it so); an SSE body is released a complete
    event at a time, so the event carrying a result is still held when it is asked about. A result it denies (or,
    failing closed, one it gave no answer for) reaches the client as a JSON-RPC error; a modified one as the
    guardrail's result. Every answer is recorded (``guardrail.verdict``, ``phase`` result) before the bytes go."""

    def __init__(self, gw: Gateway, log: ExchangeLog, policy: CompiledPolicy, calls: dict[str, McpCall]) -> None:
        self._gw = gw
        self._log = log
        self._policy = policy
        self._calls = calls  # JSON of the request id -> the call whose result is asked about
        self._replaced: dict[str, Message] = {}  # JSON of the id -> what the client gets instead
        self._events: list[tuple[SseEvent, Message]] = []  # (an SSE event as sent, the message replacing its result)

    @classmethod
    def of(cls, gw: Gateway, log: ExchangeLog, policy: CompiledPolicy | None, server: str, calls: tuple[McpCall, ...]
           ) -> ResultGuard | None:  # fmt: skip
        """None unless the server's guardrail asks about results of some of these calls."""
        guards = gw.guardrails
        if guards is None or policy is None:
            return None
        asked = {json.dumps(c.id): c for c in calls if c.id is not None and guards.asks_results(server, c.method)}
        return cls(gw, log, policy, asked) if asked else None

    async def review(
        self, pieces: list[Piece], who: Principal | None, where: tuple[str, str], ids: tuple[str, str]
    ) -> None:
        """Ask about each result these recorded pieces carry (all at once); remember what replaces which."""
        found: list[tuple[Piece, Message, McpCall]] = []
        for piece in pieces:
            # a JSON body is buffered: its piece is the whole body (a document, or raw when over the size it is
            # recorded at), so it is parsed either way
            text = piece.event.data if piece.event is not None else piece.raw
            if not self._calls:
                break
            try:
                doc = loads(text)
            except ValueError:
                continue
            for m in doc if isinstance(doc, list) else [doc]:
                call = self._calls.pop(json.dumps(m.get("id")), None) if isinstance(m, dict) and "result" in m else None
                if call is not None:
                    found.append((piece, m, call))
        if not found:
            return
        guards, (server, backend) = self._gw.guardrails, where
        assert guards is not None
        who_doc = _who(who)
        questions = [
            {"version": 1, "phase": "result", "exchange": ids[0], "request_id": ids[1], "who": who_doc,
             "server": server, "backend": backend, "method": c.method, "name": c.tool or c.prompt or c.uri,
             "arguments": c.arguments, "result": m["result"]}
            for _, m, c in found
        ]  # fmt: skip
        answers = await asyncio.gather(*(guards.ask(server, q) for q in questions))
        for (piece, m, c), a in zip(found, answers, strict=True):
            self._gw.metrics.guardrail_seconds.labels(server, a.verdict).observe(a.latency_ms / 1000)
            what = describe(self._policy, server, c)
            reason = a.reason
            replacement: Message | None = None
            if a.verdict == "deny":
                outcome = "refused"
                err: GatewayError = GuardrailDenied(what, redact_text(self._policy, server, reason))
                replacement = error_response(m.get("id"), err.jsonrpc_code, err.safe_message)
            elif a.verdict == "error" and not guards.fails_open(server):
                outcome, err = "refused", GuardrailUnavailable(reason)
                replacement = error_response(m.get("id"), err.jsonrpc_code, err.safe_message)
            elif a.verdict == "modify":
                outcome, replacement = "modified", {**m, "result": a.result}
            else:
                outcome = "passed (fail open)" if a.verdict == "error" else "passed"
            capture = Capture(self._policy.capture(server, [c.tool] if c.tool else ()), self._gw.options.capture_salt)
            recorded = _recorded_result(self._policy, server, replacement, capture) if outcome == "modified" else None
            reason = capture.leaf(reason) if capture.drops_values else redact_text(self._policy, server, reason)
            self._log.emit(
                GuardrailVerdict(message_id=c.id, call=what, verdict=a.verdict, reason=reason, phase="result",
                                 latency_ms=round(a.latency_ms, 3), outcome=outcome, result=recorded)
            )  # fmt: skip
            if replacement is not None:
                self._replaced[json.dumps(m.get("id"))] = replacement
                if piece.event is not None:
                    self._events.append((piece.event, replacement))

    def whole(self, body: bytes, sse: bool = False) -> bytes:
        """A buffered body (JSON, or SSE when a list in the same batch buffered it) with the replaced results."""
        if not self._replaced:
            return body
        self._events = []  # placed here, not in released bytes

        def replace(m: Message) -> Message:
            return self._replaced.get(json.dumps(m.get("id")), m)

        return rewrite_sse(body, (replace, _always)) if sse else rewrite_json(body, replace)

    def sse(self, released: bytes) -> bytes:
        """Released SSE bytes with each replaced result's event rewritten (the event is whole in them: the body is
        released a complete event at a time). When one cannot be found as sent (a rewrite on the way changed it),
        these bytes are withheld and only the replacements go: fail closed, never the judged result unreplaced."""
        events, self._events = self._events, []
        for ev, message in events:
            new = format_event(dumps(message), ev.event, ev.id)
            at = released.find(ev.raw)
            if at < 0:
                return b"".join(format_event(dumps(m), e.event, e.id) for e, m in events)
            released = released[:at] + new + released[at + len(ev.raw) :]
        return released


def _who(who: Principal | None) -> dict[str, Any] | None:
    if who is None:
        return None
    return {"issuer": who.issuer, "subject": who.subject, "username": who.username, "groups": list(who.groups)}


def _recorded_result(policy: CompiledPolicy, server: str, m: Message | None, capture: Capture) -> dict[str, Any] | None:
    """A modified result as the recording keeps a response: at the call's capture level, else redacted."""
    if m is None or capture.level == "metadata":
        return None  # metadata keeps no payload
    if capture.drops_values or capture.level == "full":
        kept = capture.message(m) if capture.drops_values else m
    else:
        (kept,), _, _ = redact_for_record(policy, server, [m], b"")
    result = kept.get("result")
    return result if isinstance(result, dict) else None
