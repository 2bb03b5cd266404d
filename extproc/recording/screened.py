"""What the tool-surface screens, the guardrail and the controls did, as `sessions show` and the viewer show it
(report.py): result.screened and guardrail.verdict on each call and its exchange, and on the exchange what a list
hid (policy.list_filtered) and which listed definitions a description screen found something in (tool.definition);
under each call what beside its rule decided it (policy.decision's grant, kubernetes, budget, approval; the viewer
shows them on the decision in its timeline). The viewer (audit/static/app.js) builds the same lines."""

from __future__ import annotations

import json
from typing import Any

from extproc.recording import jsonio

_SHOWN = {  # event type -> the exchange's list it is shown in (and a call's, for the first two), with what
    "result.screened": ("screened", ("time", "call", "action", "findings")),
    "guardrail.verdict": (
        "guardrail",
        ("time", "call", "phase", "verdict", "reason", "outcome", "latency_ms", "arguments", "result"),
    ),
    "policy.list_filtered": ("filtered", ("time", "method", "hidden")),
    "tool.definition": ("definitions", ("time", "kind", "name", "fingerprint", "pin", "shown", "findings")),
    "mcp.request": ("unreadable", ("time", "type", "error", "size")),  # a body not read as JSON-RPC (kept as sent)
    "mcp.response": ("unreadable", ("time", "type", "error", "size")),
}
_ONLY_WITH = {"definitions": "findings", "unreadable": "error"}  # shown only when the event has that field set


def mark_screened(calls: list[dict[str, Any]], exchanges: list[dict[str, Any]]) -> None:
    """Each call gets ``screened`` (its result.screened events: what a result screen found, where, and what was
    done) and ``guardrail`` (its guardrail.verdict events, request and result phase), matched by exchange and
    JSON-RPC id; each exchange gets all of its own (a verdict on a batch element the call list does not hold
    stays visible there), with ``filtered`` (what a list hid from the caller), ``definitions`` (listed
    definitions a description screen found something in) and ``unreadable`` (bodies not read as JSON-RPC)."""
    found: dict[tuple[Any, bytes], dict[str, list[dict[str, Any]]]] = {}
    for x in exchanges:
        x |= {"screened": [], "guardrail": [], "filtered": [], "definitions": [], "unreadable": []}
        for e in x["events"]:
            where, keys = _SHOWN.get(e["type"], ("", ()))
            if not where or (where in _ONLY_WITH and not e.get(_ONLY_WITH[where])):
                continue
            shown = {k: e.get(k) for k in keys} | {"message_id": e.get("message_id")}
            x[where].append(shown)
            if where in ("screened", "guardrail"):
                mine = found.setdefault((x["exchange"], jsonio.dumps(e.get("message_id"))), {})
                mine.setdefault(where, []).append(shown)
    for first in calls:
        for call in [first, *first.get("rounds", [])]:
            mine = found.get((call["exchange"], jsonio.dumps(call["request"].get("id"))), {})
            call["screened"], call["guardrail"] = mine.get("screened", []), mine.get("guardrail", [])


_ACTIONS = {
    "strip": "stripped before the client saw it",
    "alarm": "alarm: passed, recorded",
    "refuse": "refused: the client got an error instead",
}


def _finding(f: dict[str, Any]) -> str:
    excerpt = f" {json.dumps(f['excerpt'], ensure_ascii=False)}" if f.get("excerpt") else ""
    action = f" -> {f['action']}" if f.get("action") else ""  # a definition's findings say what each led to
    span = f"[{f.get('start')}:{f.get('end')}]"
    return f"{f.get('screen')} {f.get('rule')} at {f.get('path') or '/'} {span}{excerpt}{action}"


def screened_line(s: dict[str, Any]) -> str:
    """One result.screened as `sessions show` prints it (the viewer builds the same line from the same data)."""
    findings = "; ".join(_finding(f) for f in s.get("findings") or [])
    return f"result screened, {_ACTIONS.get(s.get('action') or '', s.get('action'))}: {findings or '-'}"


def unreadable_line(u: dict[str, Any]) -> str:
    """A body the gateway could not read as JSON-RPC (recorded as sent, with the parse error)."""
    side = "request" if u.get("type") == "mcp.request" else "response"
    return f"{side} body ({u.get('size')} bytes) not read as JSON-RPC: {u.get('error')}"


def filtered_line(f: dict[str, Any]) -> str:
    """One policy.list_filtered: what the list hid from the caller (the first 10 names; --json has all)."""
    hidden = f.get("hidden") or []
    more = f", and {len(hidden) - 10} more" if len(hidden) > 10 else ""
    return f"{f.get('method')} filtered for the caller: {len(hidden)} hidden ({', '.join(hidden[:10])}{more})"


def definition_line(d: dict[str, Any]) -> str:
    """A listed definition a description screen found something in: where, and what each finding led to."""
    shown = "shown" if d.get("shown", True) else "withheld from the caller"
    findings = "; ".join(_finding(f) for f in d.get("findings") or [])
    return f"{d.get('kind')} {d.get('name')} screened ({shown}, pin {d.get('pin')}): {findings}"


def guardrail_line(g: dict[str, Any]) -> str:
    """One guardrail.verdict: the phase, the verdict and reason, what the gateway did, how long it took."""
    reason = f" ({g['reason']})" if g.get("reason") else ""
    line = (
        f"guardrail on the {g.get('phase') or 'request'}: {g.get('verdict')}{reason} -> {g.get('outcome') or '-'}"
        f", {g.get('latency_ms')} ms"
    )
    # a modify: what the call went on with, or what the client got in place of the result (at the capture level)
    changed = g.get("arguments") if g.get("arguments") is not None else g.get("result")
    if changed is None:
        return line
    text = jsonio.dumps(changed).decode()
    what = "arguments" if g.get("arguments") is not None else "result"
    return f"{line}; {what} now {text if len(text) <= 160 else text[:159] + '…'}"


_DECIDED = ("allowed", "rule", "grant", "kubernetes", "budget", "approval")


def mark_decided(calls: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Each call gets ``decision``: its policy.decision's outcome and rule, with what else decided it (a
    just-in-time grant, a Kubernetes review, a budget, an approval), or None when none was recorded."""
    decided = {
        (e.get("exchange"), jsonio.dumps(e.get("message_id"))): {k: e.get(k) for k in _DECIDED}
        for e in events
        if e["type"] == "policy.decision"
    }
    for first in calls:
        for call in [first, *first.get("rounds", [])]:
            call["decision"] = decided.get((call["exchange"], jsonio.dumps(call["request"].get("id"))))


def decision_line(d: dict[str, Any]) -> str | None:
    """What beside the rule decided a call (printed only then): the grant, the Kubernetes review, the budget's
    counters, the approval."""
    parts = []
    if g := d.get("grant"):
        parts.append(f"grant {g.get('id')} approved by {g.get('approved_by') or '?'} ({g.get('reason') or '-'})")
    if k := d.get("kubernetes"):
        what = " ".join(str(k[f]) for f in ("verb", "resource") if k.get(f))
        parts.append(
            f"kubernetes {k.get('outcome')}{': ' + what if what else ''}{' (cached)' if k.get('cached') else ''}"
        )
    if b := d.get("budget"):
        if b.get("outcome") == "counted":
            parts.append("budget " + "; ".join(f"{x.get('count')} of {x.get('limit')}" for x in b.get("limits") or []))
        elif b.get("outcome") == "exceeded":
            parts.append(f"over budget {b.get('limit')}, counter {b.get('count')}")
        else:
            parts.append(f"budget store unavailable ({b.get('store')}), on_store_error {b.get('on_store_error')}")
    if a := d.get("approval"):
        parts.append(f"approval {a.get('id')} {a.get('state')}" + (f" by {a['by']}" if a.get("by") else ""))
    if not parts:
        return None
    rule = d.get("rule") or "(default deny)"
    return f"{'allowed' if d.get('allowed') else 'denied'} by rule {rule}: " + "; ".join(parts)
