"""Human-readable views of recordings for `sessions list` and `sessions show`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from extproc.recording import jsonio
from extproc.recording.replay import Session, pair_messages
from extproc.recording.screened import (
    decision_line,
    definition_line,
    filtered_line,
    guardrail_line,
    mark_decided,
    mark_screened,
    screened_line,
    unreadable_line,
)


def _ts(t: float | None) -> str:
    if t is None:
        return "-"
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _short(doc: Any, limit: int = 160) -> str:
    text = jsonio.dumps(doc).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def sessions_table(rows: list[dict[str, Any]]) -> Table:
    """The `sessions list` table."""
    # Session ids are what users copy into `sessions show`: never wrapped. The rest is kept narrow so a row fits
    # 80 columns for the usual ids (one space between columns, the start to the minute in UTC); long server and
    # user names fold. `--json` has everything in full.
    table = Table(title="recorded MCP sessions", box=box.SIMPLE_HEAD, pad_edge=False, padding=0, title_justify="left")
    longest = max((len(r["session"]) for r in rows), default=7)
    table.add_column("session", no_wrap=True, min_width=longest)
    table.add_column("server", overflow="fold", min_width=6)
    table.add_column("user", overflow="fold", min_width=5)
    table.add_column("started UTC", no_wrap=True)
    table.add_column("exch", justify="right", no_wrap=True)
    table.add_column("state", overflow="fold", min_width=8)
    table.add_column("verified", overflow="fold", min_width=3)
    for r in rows:
        table.add_row(
            r["session"],
            r["server"],
            r["user"] or "-",
            _ts(r["started"])[5:16],  # MM-DD HH:MM; the full time is in --json
            str(r["exchanges"]),
            "[yellow]incomplete[/yellow]" if r["state"] == "incomplete" else r["state"],
            verified_label(r),
        )
    return table


def _refusals(session: Session) -> dict[Any, dict[str, Any]]:
    """Per denied exchange: when, the status and detail the gateway answered, and the denying decision's rule."""
    decisions: dict[Any, list[dict[str, Any]]] = {}
    out: dict[Any, dict[str, Any]] = {}
    for e in session.events:
        if e["type"] == "policy.decision" and not e.get("allowed"):
            decisions.setdefault(e.get("exchange"), []).append(e)
        elif e["type"] == "exchange.end" and e.get("outcome") == "denied":
            out[e.get("exchange")] = {"time": e["time"], "status": e.get("status"), "detail": e.get("detail", "")}
    for ex, refusal in out.items():
        refusal["decisions"] = decisions.get(ex, [])
    return out


def _mark_refused(calls: list[dict[str, Any]], refused: dict[Any, dict[str, Any]]) -> None:
    """A call the gateway refused gets ``refusal``: time, status, detail, and the rule that denied it (by the
    request's id; for a batch element allowed itself, the rule that refused a sibling: the batch went as one)."""
    for first in calls:
        for call in [first, *first.get("rounds", [])]:
            refusal = refused.get(call["exchange"]) if call["response"] is None else None
            if refusal is None:
                call["refusal"] = None
                continue
            own = jsonio.dumps(call["request"].get("id"))
            decisions = refusal["decisions"]
            decision = next((d for d in decisions if jsonio.dumps(d.get("message_id")) == own), None)
            decision = decision or (decisions[0] if decisions else {})
            call["refusal"] = {
                "time": refusal["time"],
                "status": refusal["status"],
                "detail": refusal["detail"],
                "rule": decision.get("rule") or None,
                "reason": decision.get("reason") or None,
            }


def verified_label(row: dict[str, Any]) -> str:
    """The `verified` cell: NO, yes (signatures checked too) or hashes only (also when the source did not say)."""
    if not row["verified"]:
        return "[red]NO[/red]"
    return "yes" if row.get("signatures_checked") else "hashes only"


def session_doc(session: Session) -> dict[str, Any]:
    """Everything `sessions show --json` prints."""
    exchanges = []
    recorded = _recorded_credentials(session)
    for ex_id, events in session.exchanges.items():
        start = next((e for e in events if e["type"] == "exchange.start"), {})
        end = next((e for e in events if e["type"] == "exchange.end"), None)
        marker = next((e for e in events if e["type"] == "exchange.incomplete"), None)
        resp = next((e for e in events if e["type"] == "http.response"), {})
        exchanges.append(
            {
                "exchange": ex_id,
                "time": start.get("time", events[0]["time"]),
                "method": start.get("method"),
                "path": start.get("path"),
                "client": start.get("client"),
                "principal": start.get("principal"),
                "status": resp.get("status") or (end or {}).get("status"),  # a refusal has no upstream response
                "outcome": end["outcome"] if end else "incomplete" if marker else "open",
                "incomplete": marker.get("reason") if marker and not end else None,
                "duration_ms": end["duration_ms"] if end else None,
                "upstream": _credentials(events, recorded),
                # Sealed payloads whose subject was erased (shred.py): when, by whom, why; else None
                "erased": next((e["erased"] for e in events if e.get("erased")), None),
                "events": [{k: v for k, v in e.items() if k != "_writer"} for e in events],
            }
        )
    calls = pair_messages(session)
    _mark_refused(calls, _refusals(session))
    _mark_listed(calls, session)
    mark_screened(calls, exchanges)
    mark_decided(calls, session.events)
    upstream = {x["exchange"]: x["upstream"] for x in exchanges}
    for first in calls:
        for call in [first, *first.get("rounds", [])]:
            call["upstream"] = upstream.get(call["exchange"], [])
    return {
        "summary": session.summary(),
        "problems": [str(p) for p in session.problems],
        "notes": session.notes,
        "exchanges": exchanges,
        "calls": calls,
    }


def _mark_listed(calls: list[dict[str, Any]], session: Session) -> None:
    """tools/call, prompts/get, resources/read get ``definition``: the fingerprint the caller was last shown and when
    it was listed (extproc/tools/), with ``flag``: ``withheld`` when the gateway hid it, ``unlisted`` when the caller
    was never shown one, ``changed`` when the server changed that definition before the call or the caller was
    shown a definition that differs from its pin (alarm mode; until a person approves it), ``unpinned`` when the
    gateway could not pin it (no signing key), else ``""``. Also ``changes``: that item's definition.changed events
    seen up to the call (old and new fingerprints, the decision)."""
    shown: dict[tuple[Any, bytes], dict[str, Any]] = {}
    changed: dict[str, float] = {}  # old fingerprint -> when a change of it was first seen
    standing: dict[str, str] = {}  # fingerprint -> its pin standing when it was first listed (tool.definition)
    changes: list[dict[str, Any]] = []
    for e in session.events:
        if e["type"] == "policy.decision" and isinstance(e.get("definition"), dict):
            shown[(e.get("exchange"), jsonio.dumps(e.get("message_id")))] = e["definition"]
        elif e["type"] == "definition.changed":
            changed.setdefault(str(e.get("old")), e["time"])
            changes.append(e)
        elif e["type"] == "tool.definition":
            standing.setdefault(str(e.get("fingerprint")), str(e.get("pin", "")))
    approved: dict[str, float] = {}  # fingerprint -> the first call an approval of it let through
    for first in calls:
        for call in [first, *first.get("rounds", [])]:
            d = shown.get((call["exchange"], jsonio.dumps(call["request"].get("id"))))
            if d is not None and isinstance(d.get("approved"), dict):
                approved.setdefault(str(d["approved"].get("fingerprint")), call["time"])
    for first in calls:
        for call in [first, *first.get("rounds", [])]:
            d = shown.get((call["exchange"], jsonio.dumps(call["request"].get("id"))))
            if d is None:
                continue
            fp = d.get("fingerprint")
            differs = standing.get(str(fp)) in ("changed", "rejected", "forged") and not (
                fp in approved and approved[fp] <= call["time"]
            )
            flag = (
                "withheld" if d.get("withheld") else "unlisted" if fp is None
                else "changed" if (fp in changed and changed[fp] <= call["time"]) or differs
                else "unpinned" if standing.get(str(fp)) == "unpinned" else ""
            )  # fmt: skip
            mine = [
                {k: c.get(k) for k in ("time", "old", "new", "decision", "rule")}
                for c in changes
                if c.get("name") == d.get("name") and c.get("kind") == d.get("kind") and c["time"] <= call["time"]
            ]
            call["definition"] = {**d, "flag": flag, "changes": mine}


_CREDENTIAL_KEYS = (
    "server", "kind", "header", "sha256", "expires_at", "cached", "audience", "scopes", "delegation", "refused"
)  # fmt: skip


def _recorded_credentials(session: Session) -> dict[tuple[Any, Any, Any], dict[str, Any]]:
    """The session's full upstream.credential records by (server, kind, SHA-256): what a later exchange.end names."""
    out: dict[tuple[Any, Any, Any], dict[str, Any]] = {}
    for ex_id, events in session.exchanges.items():
        for e in events:
            if e["type"] == "upstream.credential" and not e.get("refused") and e.get("sha256"):
                out.setdefault((e.get("server"), e.get("kind"), e["sha256"]), {**e, "exchange": ex_id})
    return out


def _credentials(
    events: list[dict[str, Any]], recorded: dict[tuple[Any, Any, Any], dict[str, Any]]
) -> list[dict[str, Any]]:
    """An exchange's upstream credentials as shown: kind, header, the token's SHA-256 (never the token), expiry,
    audience, scopes, whether cached, who acted for whom, and the IdP's refusal if there was one. A credential its
    exchange.end only names (recorded in full earlier in the session) is joined to that record: ``recorded_in`` is
    the exchange that holds it (None when no such record is found: then only what the end names is shown)."""
    out = [{k: e.get(k) for k in _CREDENTIAL_KEYS} for e in events if e["type"] == "upstream.credential"]
    for e in events:
        named = e.get("credential") if e["type"] == "exchange.end" else None
        if isinstance(named, dict):
            full = recorded.get((named.get("server"), named.get("kind"), named.get("sha256")))
            shown = {k: (full or {}).get(k) for k in _CREDENTIAL_KEYS}
            out.append({**shown, **named, "cached": True, "recorded_in": full["exchange"] if full else None})
    return out


def credential_line(c: dict[str, Any]) -> str:
    """One upstream credential as `sessions show` prints it (the viewer builds the same line from the same data)."""
    if c.get("refused"):
        r = c["refused"]
        return f"upstream {c['kind']}: REFUSED {r.get('error', '')}: {r.get('description', '')}".rstrip(": ")
    parts = [f"upstream {c['kind']} in {c.get('header') or '?'}", f"sha256 {(c.get('sha256') or '-')[:12]}"]
    if c.get("expires_at") is not None:
        parts.append(f"expires {_ts(c['expires_at'])}")
    if c.get("delegation"):
        parts.append(" acting for ".join(reversed(c["delegation"])))  # the last actor first, the subject last
    if c.get("cached"):
        parts.append("cached")
    return ", ".join(parts)


def _listed_line(d: dict[str, Any]) -> str:
    if d.get("fingerprint") is None:
        return f"not listed to this caller{' (withheld: ' + str(d['withheld']) + ')' if d.get('withheld') else ''}"
    at = f"as listed at {_ts(d['listed_at'])}, " if d.get("listed_at") is not None else "not listed, "
    flag = {"changed": "  CHANGED since", "withheld": "  WITHHELD", "unpinned": "  UNPINNED"}.get(d.get("flag", ""), "")
    return f"{at}fingerprint {d['fingerprint']}{flag}"


def print_session(console: Console, session: Session) -> None:
    """Exchanges in order, then every JSON-RPC request with its response and any progress it streamed."""
    doc = session_doc(session)
    s = doc["summary"]
    if not s["verified"]:
        verified = "[red]VERIFICATION FAILED[/red]"
    elif s["signatures_checked"]:
        verified = "[green]signatures and chains verified[/green]"
    else:
        verified = "[green]chains verified[/green] (signatures not checked)"
    console.print(f"[bold]session {s['session']}[/bold]  server={s['server']}  user={s['user'] or '-'}  {verified}")
    console.print(f"  {s['exchanges']} exchanges, {s['events']} events, state {s['state']}, capture {s['capture']}")
    for note in doc["notes"]:
        console.print(f"  [yellow]note:[/yellow] {note}", highlight=False)
    for p in doc["problems"]:
        console.print(f"  [red]problem:[/red] {p}")
    console.print("\n[bold]exchanges[/bold]")
    for ex in doc["exchanges"]:
        who = (ex["principal"] or {}).get("username", "")
        console.print(
            f"  {_ts(ex['time'])}  {ex['method'] or '?':6} {ex['path'] or ''}  -> {ex['status'] or '-'}"
            f"  {ex['outcome']}  {ex['duration_ms'] if ex['duration_ms'] is not None else '-'} ms"
            + (f"  by {who}" if who else "")
            + (f"  ({ex['incomplete']})" if ex["incomplete"] else ""),
            highlight=False,
            soft_wrap=True,
        )
        for cred in ex["upstream"]:
            console.print(f"      {credential_line(cred)}", highlight=False, markup=False, soft_wrap=True)
        if (erased := ex.get("erased")) is not None:
            console.print(f"      payloads {erased_line(erased)}", highlight=False, markup=False, soft_wrap=True)
        lines = [*map(unreadable_line, ex["unreadable"]), *map(filtered_line, ex["filtered"])]
        lines += map(definition_line, ex["definitions"])
        lines += [*map(guardrail_line, ex["guardrail"]), *map(screened_line, ex["screened"])]
        for line in lines:
            console.print(f"      {line}", highlight=False, markup=False, soft_wrap=True)
    console.print("\n[bold]JSON-RPC[/bold]")
    for first in doc["calls"]:
        for n, call in enumerate([first, *first.get("rounds", [])]):
            _print_call(console, call, f"round {n + 1} " if first.get("rounds") else "")


def erased_line(erased: dict[str, Any]) -> str:
    """'erased on 2026-12-07 18:30:00 UTC by dpo (GDPR art. 17 request 42)'."""
    when = _ts(erased["time"]) if isinstance(erased.get("time"), int | float) else "?"
    return f"erased on {when} by {erased.get('by') or '?'} ({erased.get('reason') or 'no reason given'})"


def _print_call(console: Console, call: dict[str, Any], label: str) -> None:
    """One JSON-RPC call: request, the notifications under it, its response or the gateway's refusal."""
    req = call["request"]
    arrow = "->" if call["from"] == "client" else "<-"
    params = req.get("params")
    console.print(
        f"  {_ts(call['time'])}  {arrow} {label}{req.get('method')} {_short(params) if params else ''}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    for n in call["notifications"]:
        m = n["message"]
        console.print(
            f"  {_ts(n['time'])}     ~ {m.get('method')} {_short(m.get('params'))}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    if (shown := call.get("definition")) is not None:
        console.print(f"               {_listed_line(shown)}", highlight=False, markup=False, soft_wrap=True)
    if call.get("decision") and (decided := decision_line(call["decision"])) is not None:
        console.print(f"               {decided}", highlight=False, markup=False, soft_wrap=True)
    for g in call.get("guardrail", []):
        console.print(f"               {guardrail_line(g)}", highlight=False, markup=False, soft_wrap=True)
    for sc in call.get("screened", []):
        console.print(f"               {screened_line(sc)}", highlight=False, markup=False, soft_wrap=True)
    if call["response"] is not None:
        r = call["response"]
        body = r.get("result") if "result" in r else {"error": r.get("error")}
        console.print(
            f"  {_ts(call['response_time'])}     <= {_short(body)}", highlight=False, markup=False, soft_wrap=True
        )
    elif (refusal := call.get("refusal")) is not None:
        console.print(
            f"  {_ts(refusal['time'])}     <= refused by the gateway ({refusal['status']}): {refusal['detail']}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
