"""Pure policy decisions: who may make which MCP call, see which list items, view which recordings.

No I/O and no gRPC here. ``decide`` is what the request path calls; ``explain`` runs the very same evaluation
(``_evaluate``) but keeps a trace of every candidate rule for ``mcp-extproc policy explain``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extproc.authn.principal import Principal
from extproc.mcp.jsonrpc import McpCall, fold_key
from extproc.mcp.methods import LISTINGS, Listing
from extproc.policy.compiled import (
    OBJECT_FIELD,
    ApprovalNeed,
    ArgCheck,
    CompiledPolicy,
    CompiledRule,
    CompiledSubjects,
    value_key,
)
from extproc.policy.facts import Facts
from extproc.policy.redact import Redaction
from extproc.secrets import marker

log = logging.getLogger(__name__)

DEFAULT_DENY = "default-deny"
# A '.' or '..' path segment, raw or percent-encoded, between raw or encoded separators (/, \\, %2f, %5c).
_DOT_SEGMENT = re.compile(r"(?i)(?:^|[/\\]|%2f|%5c)(?:\.|%2e){1,2}(?:[/\\?#]|%2f|%5c|$)")
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome for one call (or a batch, with ``elements``): which rule decided, why, and what was looked at."""

    allowed: bool
    rule: str  # the deciding rule's name, or "default-deny"
    reason: str  # for logs and recordings; never contains argument values
    considered: tuple[str, ...] = ()  # candidate rules evaluated, in evaluation order, up to the deciding one
    elements: tuple[Decision, ...] = ()  # per-element decisions of a batch
    invalid: bool = False  # refused because the call itself is ambiguous (HTTP 400), not by a rule
    kubernetes: dict[str, object] | None = None  # the SubjectAccessReview the deciding rule required, and its answer
    grant: dict[str, object] | None = None  # the just-in-time grant that allowed the call (id, reason, approver, ...)
    unavailable: bool = False  # denied because an authority (the Kubernetes API server) did not answer: a 503
    approval: ApprovalNeed | None = None  # held by an approve rule: the call passes once a person approves it


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """One candidate rule as ``explain`` saw it."""

    rule: str
    effect: str
    source: str
    matched: bool
    why: str


def decide(policy: CompiledPolicy, who: Principal, server: str, call: McpCall, facts: Facts | None = None) -> Decision:
    """Deny by default; an explicit deny rule wins over any allow; an evaluation error is a deny."""
    try:
        return _evaluate(policy, who, server, call, facts=facts)
    except Exception as e:
        log.exception("policy evaluation failed; denying %s", describe_call(server, call))
        return Decision(False, DEFAULT_DENY, f"policy evaluation error ({type(e).__name__}); denied")


def explain(policy: CompiledPolicy, who: Principal, server: str, call: McpCall) -> tuple[Decision, list[RuleTrace]]:
    """The decision plus why each candidate rule matched or not (same evaluation as ``decide``)."""
    trace: list[RuleTrace] = []
    try:
        return _evaluate(policy, who, server, call, trace=trace), trace
    except Exception as e:
        return Decision(False, DEFAULT_DENY, f"policy evaluation error ({type(e).__name__}: {e}); denied"), trace


def _evaluate(
    policy: CompiledPolicy,
    who: Principal,
    server: str,
    call: McpCall,
    *,
    listing: bool = False,
    trace: list[RuleTrace] | None = None,
    facts: Facts | None = None,
) -> Decision:
    """THE evaluation order. Every decision the gateway makes goes through here:

    1. A malformed call is denied: tools/call without a tool name, prompts/get without a prompt name,
       resources/* without a URI, or a URI with '.'/'..' segments (they could walk out of an allowed glob).
       An ambiguous call is denied as invalid: tool arguments whose names fold onto each other or onto an
       argument a candidate rule constrains, spelled differently (a server matching names case-insensitively
       would read "Text" as the "text" a rule checks).
    2. Candidates come from the compiled index: rules for this server (or '*') and this method, filed under the
       call's tool/URI/prompt name, plus rules using globs. Deny rules come first, then allow rules, each in
       policy order (files by name, rules top to bottom).
    3. A candidate applies when its subjects match the caller, its tools/resources/prompts match the call's
       object (when the method has one), and all its argument conditions hold (tools/call only).
    4. The first deny rule that applies denies: an explicit deny wins over any allow.
    4a. Otherwise the first approve rule that applies holds the call (``approval`` set, not allowed): the exchange
       lets it pass only with a person's approval of this exact call (extproc/controls/approvals.py). A list
       shows what an approve rule covers (the caller may ask for it).
    5. Otherwise the first allow rule that applies allows. A rule requiring a Kubernetes authorization applies only
       if the API server's SubjectAccessReview (in ``facts``) allowed it; an unanswered review denies right there,
       marked ``unavailable`` (503): fail closed, never skipped.
    6. Otherwise a signed, unexpired just-in-time grant (in ``facts``) for this caller, server and tool allows.
    7. Otherwise: default deny.
    ``listing`` (for filter_list) ignores argument conditions: an allow rule with conditions counts (some call
    could pass them) and a deny rule with conditions does not (it refuses only some calls).
    Exceptions propagate to decide(), which turns them into a deny.
    """
    field = OBJECT_FIELD.get(call.method)
    obj: str | None = getattr(call, field) if field is not None else None
    if field is not None and not obj:
        return Decision(False, DEFAULT_DENY, f"{call.method} without a {'name' if field != 'uri' else 'uri'}")
    if field == "uri" and obj is not None and _DOT_SEGMENT.search(obj):
        return Decision(False, DEFAULT_DENY, "resource URI contains '.' or '..' segments")

    rules, names = policy.bucket(server, call.method).candidates(obj)
    if call.arguments and (ambiguous := ambiguous_arguments(rules, call.arguments)) is not None:
        return Decision(False, DEFAULT_DENY, ambiguous, invalid=True)
    decision: Decision | None = None
    for i, rule in enumerate(rules):
        why = _miss(rule, who, call, field, obj, listing, trace is not None)
        review = None
        if why is None and rule.kubernetes is not None:
            review = (facts.reviews if facts is not None else {}).get(rule.kubernetes)
            if review is None or review.unavailable:
                if decision is None:
                    what = f"rule {rule.name!r} needs a Kubernetes authorization the API server did not give"
                    record: dict[str, object] = (
                        review.to_record(rule.kubernetes) if review else {"outcome": "unavailable"}
                    )
                    return Decision(False, rule.name, what, names[: i + 1], kubernetes=record, unavailable=True)
            elif not review.allowed:
                why = f"kubernetes: {rule.kubernetes.verb} {rule.kubernetes.resource} not allowed ({review.reason})"
        if trace is not None:
            trace.append(RuleTrace(rule.name, rule.effect, rule.source, why is None, why or _applies(rule, decision)))
        if why is None and decision is None:
            what = f"rule {rule.name!r} {_verb(rule)} {describe_call(server, call)}"
            k8s = review.to_record(rule.kubernetes) if review is not None and rule.kubernetes is not None else None
            if rule.approval is not None:
                what = f"{what} once one of {rule.approval.text} approves it"
                decision = Decision(listing, rule.name, what, names[: i + 1], approval=rule.approval)
            else:
                decision = Decision(not rule.deny, rule.name, what, names[: i + 1], kubernetes=k8s)
            if trace is None:
                return decision
    if decision is not None:
        return decision
    grants, now = (facts.grants, facts.now) if facts is not None else ((), 0.0)
    for g in grants:
        if g.covers(who, server, call.method, call.tool, now):
            what = f"grant {g.id} ({g.reason[:200]}) allows {describe_call(server, call)}"
            return Decision(True, f"grant:{g.id}", what, names, grant=g.to_record())
    return Decision(False, DEFAULT_DENY, f"no rule allows {describe_call(server, call)}", names)


def ambiguous_arguments(rules: Sequence[CompiledRule], args: Mapping[str, Any]) -> str | None:
    """Why the argument names are ambiguous to a decoder that folds case (None when they are not).

    Folding is the one used for request keys by strict parsing (``fold_key``): Unicode case folding, so the long
    s folds to 's' as Go's encoding/json matches it.
    """
    folded: dict[str, str] = {}
    for key in args:
        f = fold_key(key)
        if f in folded:
            return f"arguments {folded[f][:40]!r} and {key[:40]!r} are the same name to a case-insensitive server"
        folded[f] = key
    for rule in rules:
        for a in rule.arguments:
            spelled = folded.get(fold_key(a.name))
            if spelled is not None and spelled != a.name:
                return f"argument {spelled[:40]!r} is a different spelling of {a.name!r}, which the policy constrains"
    return None


def _verb(rule: CompiledRule) -> str:
    return "denies" if rule.deny else "holds for approval" if rule.approval is not None else "allows"


def _applies(rule: CompiledRule, decided: Decision | None) -> str:
    if decided is None:
        return f"deciding rule: {_verb(rule)}"
    return f"not deciding: {decided.rule!r} came first"


def _miss(
    rule: CompiledRule, who: Principal, call: McpCall, field: str | None, obj: str | None, listing: bool, detail: bool
) -> str | None:
    """Why ``rule`` does not apply (None when it does). Server and method were matched by the index."""
    why = subjects_miss(rule.subjects, who, detail)
    if why is not None:
        return why
    if field is not None and field in rule.objects and not rule.objects[field](obj or ""):
        return f"{field} {obj!r} is not listed" if detail else "object not listed"
    if rule.arguments:
        if listing:
            return "has argument conditions (deny applies only to some calls)" if rule.deny else None
        return _arguments_miss(rule, call.arguments, detail)
    return None


def subjects_miss(s: CompiledSubjects, who: Principal, detail: bool = False) -> str | None:
    """Why the caller is not one of these subjects (None when it is)."""
    if s.names_someone and not (s.any_user or who.username in s.users or not s.groups.isdisjoint(who.groups)):
        if not detail:
            return "subject not listed"
        parts = [f"user {who.username!r} not in users {sorted(s.users)}"] if s.users else []
        if s.groups:
            parts.append(f"groups {list(who.groups)} not in groups {sorted(s.groups)}")
        return " and ".join(parts)
    for c in s.claims:
        value = _claim(who.claims, c.claim, c.pointer)
        items = value if isinstance(value, list) else [value]
        if value is _MISSING or not any(
            (value_key(v) in c.values)
            if c.values is not None
            else (isinstance(v, str) and c.regex is not None and c.regex.fullmatch(v))
            for v in items
        ):
            return f"claim {c.claim!r} {'is absent' if value is _MISSING else 'does not match'}"
    return None


def _claim(claims: Mapping[str, Any], name: str, pointer: tuple[str, ...] | None) -> Any:
    if pointer is None:
        return claims.get(name, _MISSING)
    node: Any = claims
    for seg in pointer:
        if isinstance(node, dict) and seg in node:
            node = node[seg]
        elif isinstance(node, list) and seg.isdigit() and int(seg) < len(node):
            node = node[int(seg)]
        else:
            return _MISSING
    return node


def _arguments_miss(rule: CompiledRule, args: Mapping[str, Any], detail: bool) -> str | None:
    """Argument conditions, failing closed both ways.

    Allow rules need every condition to hold. Deny rules apply unless a condition definitely fails: an absent
    or wrongly typed argument cannot prove the call harmless. ``optional`` makes an absent argument harmless
    (an allow rule still applies, a deny rule does not). Approve rules restrict, so they fail closed like deny.
    """
    restrictive = rule.deny or rule.approval is not None
    for a in rule.arguments:
        value = args.get(a.name, _MISSING)
        if value is _MISSING:
            # allow+required or deny+optional: the rule does not apply; allow+optional, deny+required: it may.
            if a.optional == restrictive:
                return f"argument {a.name!r} is absent" + (" (optional)" if a.optional else "")
            continue
        failed, unknown = _check_argument(a, value)
        if failed or (unknown and not restrictive):
            return f"argument {a.name!r} {failed or unknown}"
    return None


def _check_argument(a: ArgCheck, v: Any) -> tuple[str, str]:
    """(what definitely fails, what cannot be checked for this value's type); empty strings when fine."""
    is_num = isinstance(v, int | float) and not isinstance(v, bool)
    if a.values is not None and value_key(v) is None:
        return "", "is not a string, number or boolean"
    if a.values is not None and value_key(v) not in a.values:
        return "is not one of the listed values", ""
    if a.regex is not None:
        if not isinstance(v, str):
            return "", "is not a string (pattern)"
        if not a.regex.fullmatch(v):
            return "does not match the pattern", ""
    if a.min is not None or a.max is not None:
        if not is_num:
            return "", "is not a number (min/max)"
        if not math.isfinite(v):  # NaN compares false with every bound: it would pass any range
            return "", "is not a finite number (min/max)"
        if (a.min is not None and v < a.min) or (a.max is not None and v > a.max):
            return f"is outside [{a.min}, {a.max}]", ""
    if a.max_length is not None:
        if not isinstance(v, str | list):
            return "", "is not a string or array (max_length)"
        if len(v) > a.max_length:
            return f"is longer than {a.max_length}", ""
    return "", ""


def decide_batch(
    policy: CompiledPolicy, who: Principal, server: str, calls: Sequence[McpCall], facts: Facts | None = None
) -> Decision:
    """Decide every element of a JSON-RPC batch; one denied element denies the whole batch."""
    if not calls:
        return Decision(False, DEFAULT_DENY, "empty batch")
    decisions = tuple(decide(policy, who, server, c, facts) for c in calls)
    for i, d in enumerate(decisions):
        if not d.allowed:
            return Decision(False, d.rule, f"batch element {i}: {d.reason}", d.considered, decisions, d.invalid)
    rules = ",".join(dict.fromkeys(d.rule for d in decisions))
    considered = tuple(dict.fromkeys(n for d in decisions for n in d.considered))
    return Decision(True, rules, f"all {len(decisions)} batch elements allowed", considered, decisions)


def _use(listing: Listing, name: str) -> McpCall:
    """The call that uses one listed item: what the caller must be allowed for the item to stay in the list."""
    if listing.use == "tools/call":
        return McpCall(listing.use, tool=name)
    if listing.use == "prompts/get":
        return McpCall(listing.use, prompt=name)
    return McpCall(listing.use, uri=name)


def filter_list(
    policy: CompiledPolicy, who: Principal, server: str, method: str, result: dict[str, Any], facts: Facts | None = None
) -> dict[str, Any]:
    """Keep only the list items the caller may use (argument conditions not considered); others pass unchanged."""
    listing = LISTINGS.get(method)
    if listing is None or not isinstance(result, dict) or not isinstance(result.get(listing.key), list):
        return result
    kept = []
    for item in result[listing.key]:
        name = item.get(listing.item) if isinstance(item, dict) else None
        if not isinstance(name, str):
            continue  # an item we cannot name is an item we cannot authorize
        try:
            if _evaluate(policy, who, server, _use(listing, name), listing=True, facts=facts).allowed:
                kept.append(item)
        except Exception:
            log.exception("policy evaluation failed while filtering %s; hiding the item", method)
    return {**result, listing.key: kept}


def redact(policy: CompiledPolicy, server: str, payload: object) -> tuple[object, list[Redaction]]:
    """Redacted copy of a payload for recording, and what was redacted; on error nothing of it is kept."""
    try:
        return policy.redactor(server).apply(payload)
    except Exception as e:  # e.g. RecursionError on absurd nesting: store nothing rather than something raw
        log.error("redaction failed for server %s (%s); recording a placeholder", server, type(e).__name__)
        return marker("redaction-error"), [Redaction("redaction-error", "", "path")]


def may_view(policy: CompiledPolicy, who: Principal, server: str, owner_subject: str) -> bool:
    """May ``who`` list and replay a recording of ``server`` made by ``owner_subject``? No viewer rule: no."""
    try:
        return any(
            (v.servers is None or server in v.servers)
            and (v.all_sessions or owner_subject == who.subject)
            and subjects_miss(v.subjects, who) is None
            for v in policy.viewers
        )
    except Exception:
        log.exception("viewer evaluation failed; refusing")
        return False


def describe_call(server: str, call: McpCall) -> str:
    """'tools/call delete_repo on github' — safe to show a client (no argument values)."""
    obj = call.tool or call.prompt or call.uri
    return f"{call.method}{f' {obj[:200]!r}' if obj else ''} on server {server!r}"
