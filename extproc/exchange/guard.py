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
from typing import Any

from extproc.authn.principal import Principal
from extproc.errors import GatewayError, GuardrailDenied, GuardrailUnavailable
from extproc.exchange.decide import CallKey, call_key, describe
from extproc.gateway import Gateway
from extproc.mcp.jsonrpc import Message, is_request, to_call
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
    who_doc = (
        {"issuer": who.issuer, "subject": who.subject, "username": who.username, "groups": list(who.groups)}
        if who is not None
        else None
    )
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
