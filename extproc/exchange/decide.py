"""The exchange's authorization step (policy/enforce.py and policy/engine.py decide): every request of a body
decided with the facts of outside authorities (SubjectAccessReviews, grants) and the tool surface, each decision
on the record, and the refusal chosen when one is denied. Deny wins: one denied request refuses the whole body.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from extproc.authn.principal import Principal
from extproc.controls.hold import hold
from extproc.errors import AuthorizationUnavailable, GatewayError, InvalidRequest, PolicyDenied, ToolWithheld
from extproc.exchange.surface import SurfaceCheck
from extproc.gateway import Gateway
from extproc.mcp.jsonrpc import McpCall, ParsedBody, error_response, is_request
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import Verdict, authorize, redact_text
from extproc.policy.engine import describe_call
from extproc.policy.facts import Facts, gather
from extproc.recording.events import PolicyDecision
from extproc.recording.exchange_log import ExchangeLog

# A refusal: the error, and for a refused batch the JSON-RPC errors that answer it (one per request).
Refusal = tuple[GatewayError, list[dict[str, Any]] | dict[str, Any] | None]


CallKey = tuple[str, str, str | None]


def call_key(call: McpCall) -> CallKey:
    """A call's id, method and item: what finds it again among a body's calls (McpCall holds a dict: no hash)."""
    return repr(call.id), call.method, call.tool or call.prompt or call.uri


def describe(policy: CompiledPolicy | None, server: str, call: McpCall) -> str:
    """'tools/call x on server y' with the server's redactions applied: a resource URI may carry a secret."""
    text = describe_call(server, call)
    if policy is None:
        return text
    memo = _described if _described_by[0] is policy else _new_memo(policy)
    key = (server, text)
    found = memo.get(key)
    if found is None:
        found = redact_text(policy, server, text)
        if len(memo) < _DESCRIBED_MAX:
            memo[key] = found
    return found


# A call is described on every decision (policy.decision, refusals, result screens) and the descriptions repeat
# (a method, a tool, a server): each redacted once per policy snapshot. A reload starts a new memo, so no text is
# kept past the policy that redacted it; bounded because tool names and URIs come from clients.
_DESCRIBED_MAX = 4096
_described: dict[tuple[str, str], str] = {}
_described_by: list[CompiledPolicy | None] = [None]


def _new_memo(policy: CompiledPolicy) -> dict[tuple[str, str], str]:
    _described.clear()
    _described_by[0] = policy
    return _described


class Decisions:
    """The decisions of one exchange: the verdict, the facts it used and the lists its response filters."""

    def __init__(self, gw: Gateway, log: ExchangeLog, tools: SurfaceCheck) -> None:
        self.gw = gw
        self.log = log
        self.tools = tools
        self.verdict: Verdict | None = None
        self.facts: Facts | None = None  # SubjectAccessReviews and grants the decisions used (list filtering too)
        self.lists: dict[str, str] = {}  # list requests whose responses are filtered
        self.reply_headers: dict[str, str] = {}  # headers of a refusal (a budget's Retry-After)
        self.charged = False  # this exchange's calls were charged against their rules' limits
        self.backend = ""  # the backend the exchange was routed to (an approval is bound to it)
        self.approved_retry = False  # a held call passed on an approval (its answer to our elicitation is removed)
        self.shown: dict[CallKey, dict[str, Any]] = {}  # per call, the definition its caller was last shown

    async def body(
        self, policy: CompiledPolicy, who: Principal, server: str, session: str | None, parsed: ParsedBody
    ) -> Refusal | None:
        """Every request of the body decided and recorded; one denial refuses the whole body."""
        gw = self.gw
        methods = {str(m.get("method")) for m in parsed.messages if is_request(m)}
        self.facts = await gather(policy, server, who, gw.clock(), gw.reviewer, gw.grants, methods)
        t0 = perf_counter()
        verdict = self.verdict = authorize(policy, who, server, parsed.messages, self.facts)
        gw.metrics.decision_seconds.observe(perf_counter() - t0)
        held: Refusal | None = None
        approval: dict[int, dict[str, Any]] = {}  # an approve rule held a call: its request or the approval used
        if any(d.approval is not None for d in verdict.decisions):
            first = parsed.messages[0] if len(parsed.messages) == 1 else None
            args = (gw.approvals, policy, who, server, self.backend, parsed.batch, verdict, self.log.exchange_id, first)
            verdict, refusal, answer, approval = await hold(*args)
            self.approved_retry = refusal is None
            self.verdict = verdict
            held = (refusal, answer) if refusal is not None else None
        withheld, shown = (
            await self.tools.check_calls(policy, server, session, verdict.calls)
            if verdict.denied is None and self.tools.surface is not None
            else (None, {})
        )
        # Budgets (extproc/controls/budgets.py): charged for a body that would go upstream, once per exchange: a
        # body the server's guardrail modified is decided again but not charged again (the operator's guardrail
        # rewrote it; the client's call was charged as sent).
        spent = (
            await gw.budgets.charge(policy, who, server, verdict.calls, verdict.decisions, gw.metrics)
            if verdict.denied is None and withheld is None and held is None and policy.budgets and not self.charged
            else None
        )
        self.charged |= spent is not None
        self.shown = {call_key(verdict.calls[i]): record for i, record in shown.items()}
        for i, (call, d) in enumerate(zip(verdict.calls, verdict.decisions, strict=True)):
            outside = {"kubernetes": d.kubernetes, "grant": d.grant, "definition": shown.get(i)}
            allowed, reason = d.allowed, d.reason
            if spent is not None and (budget := spent.records.get(i)) is not None:
                outside["budget"] = budget
                if spent.refused_call == i:
                    allowed, reason = False, str(spent.refusal)
            self.record(policy, server, call, allowed, d.rule, reason, approval=approval.get(i), **outside)
        if held is not None:
            return held
        if spent is not None and spent.refusal is not None:  # over a limit (429) or the store down, rule closed (503)
            self.reply_headers = spent.headers
            e = spent.refusal
            batch = [error_response(c.id, e.jsonrpc_code, e.safe_message) for c in verdict.calls if c.id is not None]
            return e, batch if parsed.batch else None
        if withheld is not None:
            return ToolWithheld(redact_text(policy, server, withheld)), None
        if (denied := verdict.denied) is None:
            self.lists = verdict.lists
            self.lists.update(self.tools.templates(verdict.calls))
            return None
        call, d = denied
        err: GatewayError = (
            InvalidRequest(d.reason)
            if d.invalid
            else AuthorizationUnavailable()
            if d.unavailable
            else PolicyDenied(d.rule, describe(policy, server, call))
        )
        if parsed.batch:  # one denied element denies the batch: every request gets the error
            errors = [
                error_response(c.id, err.jsonrpc_code, err.safe_message) for c in verdict.calls if c.id is not None
            ]
            return err, errors
        return err, None

    def http(self, policy: CompiledPolicy, who: Principal, server: str, name: str) -> GatewayError | None:
        """GET (open the server's stream) and DELETE (end the session) are decided like methods, named ``name``."""
        verdict = authorize(policy, who, server, ({"method": name},))
        call, d = verdict.calls[0], verdict.decisions[0]
        self.record(policy, server, call, d.allowed, d.rule, d.reason)
        return None if d.allowed else PolicyDenied(d.rule, describe(policy, server, call))

    def record(
        self, policy: CompiledPolicy, server: str, call: McpCall, allowed: bool, rule: str, reason: str, **outside: Any
    ) -> None:
        """One policy.decision; ``outside``: what an outside authority said (a SubjectAccessReview, a grant)."""
        self.gw.metrics.decided(server, allowed)
        desc = describe(policy, server, call)
        self.log.emit(
            PolicyDecision(allowed=allowed, rule=rule, reason=reason, call=desc, message_id=call.id, **outside)
        )
