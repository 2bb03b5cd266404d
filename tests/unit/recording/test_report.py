"""`sessions list` at a terminal's common 80 columns: session ids stay whole, on one line."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from extproc.recording.replay import Session
from extproc.recording.report import print_session, session_doc, sessions_table


def _row(session: str, user: str = "alice") -> dict:
    return {
        "session": session,
        "server": "github",
        "user": user,
        "started": 1_796_000_000.123,
        "exchanges": 12,
        "state": "complete",
        "verified": True,
        "signatures_checked": False,
    }


@pytest.mark.parametrize("width", [80, 100])
def test_session_ids_are_never_wrapped(width: int) -> None:
    rows = [
        _row("8f14e45fceea167a5a36dedd4bea2543"),
        _row("x-0d9c6b8e-5c1f-4c4e-9a53-0f0e2d9b7a11", user="https://idp.example.com/realms/corp#alice@example.com"),
    ]
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(sessions_table(rows))

    text = out.getvalue()
    assert all(len(line) <= width for line in text.splitlines())
    for r in rows:
        assert r["session"] in text  # whole, on one line
    assert "11-30 00:53" in text and "github" in text and "complete" in text


def _call_events(ex: str, t: float, definition: dict, msg_id: int) -> list[dict]:
    call = {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": {"name": "echo"}}
    decision = {"type": "policy.decision", "exchange": ex, "time": t, "message_id": msg_id, "allowed": True}
    return [
        {"type": "exchange.start", "exchange": ex, "time": t},
        {"type": "mcp.request", "exchange": ex, "time": t, "messages": [call]},
        {**decision, "definition": {"kind": "tool", "name": "echo", **definition}},
        {"type": "mcp.response", "exchange": ex, "time": t + 0.1, "messages": [{"jsonrpc": "2.0", "id": msg_id}]},
    ]


def _definition(fp: str, pin: str, t: float) -> dict:
    return {"type": "tool.definition", "exchange": "l", "time": t, "kind": "tool", "name": "echo", "fingerprint": fp,
            "pin": pin}  # fmt: skip


PRINTED = {"changed": "CHANGED since", "withheld": "WITHHELD", "unpinned": "UNPINNED", "": "as listed at 1970",
           "unlisted": "not listed to this caller"}  # fmt: skip


@pytest.mark.parametrize(
    ("listed", "definition", "flag"),
    [
        pytest.param([_definition("A", "new", 1)], {"fingerprint": "A", "listed_at": 1}, "", id="pinned"),
        pytest.param(
            [_definition("A", "unpinned", 1)], {"fingerprint": "A", "listed_at": 1}, "unpinned", id="unpinned"
        ),
        # alarm mode: the caller was shown (and called) a definition that differs from its pin
        pytest.param(
            [
                _definition("B", "changed", 1),
                {
                    "type": "definition.changed",
                    "exchange": "l",
                    "time": 1,
                    "kind": "tool",
                    "name": "echo",
                    "old": "A",
                    "new": "B",
                    "decision": "alarm",
                    "rule": "p.yaml:3",
                },
            ],
            {"fingerprint": "B", "listed_at": 1},
            "changed",
            id="changed-alarm",
        ),
        pytest.param(
            [_definition("B", "changed", 1)],
            {"fingerprint": "B", "listed_at": 1, "approved": {"fingerprint": "B", "by": "carol", "at": 1.5}},
            "",
            id="changed-then-approved",
        ),
        pytest.param([], {"fingerprint": "B", "withheld": "hide"}, "withheld", id="withheld"),
        pytest.param([], {"fingerprint": None, "listed": False}, "unlisted", id="unlisted"),
    ],
)
def test_each_call_says_what_it_was_shown_and_flags_it(listed: list, definition: dict, flag: str) -> None:
    session = Session("s", events=[*listed, *_call_events("x1", 2.0, definition, 7)])
    (call,) = session_doc(session)["calls"]
    assert call["definition"]["flag"] == flag
    changes = [e for e in listed if e["type"] == "definition.changed"]
    assert [(c["old"], c["new"], c["decision"]) for c in call["definition"]["changes"]] == [
        (c["old"], c["new"], c["decision"]) for c in changes
    ]
    out = io.StringIO()
    print_session(Console(file=out, width=200, color_system=None), session)
    assert PRINTED[flag] in (out.getvalue())


def test_each_exchange_names_its_upstream_credential_never_a_token() -> None:
    base = {"type": "upstream.credential", "server": "demo", "kind": "token_exchange", "header": "authorization"}
    used = {**base, "exchange": "x1", "time": 2.0, "sha256": "ab" * 32, "expires_at": 1_796_000_300.0}
    used |= {"cached": False, "audience": ["api"], "scopes": ["repo:read"], "delegation": ["alice", "mcp-gateway"]}
    refused = {**base, "exchange": "x2", "time": 3.0}
    refused["refused"] = {"error": "invalid_target", "description": "unknown target"}
    events = [*_call_events("x1", 2.0, {"fingerprint": "A", "listed_at": 1}, 7), used]
    events += [{"type": "exchange.start", "exchange": "x2", "time": 3.0}, refused]
    doc = session_doc(Session("s", events=events))
    by_ex = {x["exchange"]: x["upstream"] for x in doc["exchanges"]}
    assert by_ex["x1"][0]["sha256"] == "ab" * 32 and by_ex["x1"][0]["delegation"] == ["alice", "mcp-gateway"]
    assert by_ex["x2"][0]["refused"]["error"] == "invalid_target"
    assert doc["calls"][0]["upstream"] == by_ex["x1"]
    out = io.StringIO()
    print_session(Console(file=out, width=200, color_system=None), Session("s", events=events))
    text = out.getvalue()
    assert "upstream token_exchange in authorization, sha256 abababababab, expires 2026-11-30" in text
    assert "mcp-gateway acting for alice" in text
    assert "upstream token_exchange: REFUSED invalid_target: unknown target" in text


def test_an_exchange_end_naming_a_credential_is_joined_to_its_full_record() -> None:
    """A credential recorded in full once per unit; later exchanges' ends name it (extproc/exchange/upstream.py)."""
    full = {"type": "upstream.credential", "server": "demo", "kind": "token_exchange", "header": "authorization"}
    full |= {"exchange": "x1", "time": 2.0, "sha256": "ab" * 32, "expires_at": 1_796_000_300.0, "cached": False}
    full |= {"audience": ["api"], "scopes": ["repo:read"], "delegation": ["alice", "mcp-gateway"]}
    named = {"server": "demo", "kind": "token_exchange", "sha256": "ab" * 32, "expires_at": 1_796_000_300.0}
    lost = {**named, "sha256": "cd" * 32}  # its full record is not in the session (a lost or foreign line)
    events = [{"type": "exchange.start", "exchange": "x1", "time": 1.0}, full]
    for ex, credential in (("x2", named), ("x3", lost)):
        end = {"type": "exchange.end", "exchange": ex, "time": 3.1, "outcome": "complete", "duration_ms": 1.0}
        events += [{"type": "exchange.start", "exchange": ex, "time": 3.0}, {**end, "credential": credential}]
    by_ex = {x["exchange"]: x["upstream"] for x in session_doc(Session("s", events=events))["exchanges"]}
    (joined,) = by_ex["x2"]
    kept = {k: v for k, v in full.items() if k not in ("type", "exchange", "time")}
    assert joined == {**kept, "refused": None, "cached": True, "recorded_in": "x1"}
    (alone,) = by_ex["x3"]
    assert alone["sha256"] == "cd" * 32 and alone["kind"] == "token_exchange" and alone["recorded_in"] is None
    assert alone["delegation"] is None
    out = io.StringIO()
    print_session(Console(file=out, width=200, color_system=None), Session("s", events=events))
    assert out.getvalue().count("upstream token_exchange in authorization, sha256 abababababab") == 2
    assert "upstream token_exchange in ?, sha256 cdcdcdcdcdcd" in out.getvalue()


def test_screened_results_and_guardrail_verdicts_are_shown_on_the_call_and_its_exchange() -> None:
    """result.screened (what a screen found in a result, where, and what was done) and guardrail.verdict (both
    phases) are in the record: `sessions show` prints them under the exchange and the call (before, neither)."""
    events = _call_events("x1", 2.0, {"fingerprint": "A", "listed_at": 1}, 7)
    found = {"screen": "invisible", "rule": "zero-width", "path": "/content/0/text", "start": 3, "end": 4}
    events += [
        {"type": "guardrail.verdict", "exchange": "x1", "time": 2.01, "message_id": 7, "call": "tools/call 'echo'",
         "verdict": "allow", "reason": "fine", "outcome": "passed", "latency_ms": 1.5, "phase": "request"},
        {"type": "guardrail.verdict", "exchange": "x1", "time": 2.2, "message_id": 7, "call": "tools/call 'echo'",
         "verdict": "modify", "reason": "", "outcome": "modified", "latency_ms": 2.25, "phase": "result",
         "result": {"content": []}},
        {"type": "result.screened", "exchange": "x1", "time": 2.2, "message_id": 7, "call": "tools/call 'echo'",
         "action": "strip", "findings": [{**found, "excerpt": "U+200B"}]},
        {"type": "result.screened", "exchange": "x1", "time": 2.2, "message_id": 8, "call": "tools/call 'echo'",
         "action": "refuse", "findings": [{**found, "screen": "instructions", "rule": "authority-tag", "excerpt": ""}]},
    ]  # fmt: skip
    doc = session_doc(Session("s", events=events))
    (call,) = doc["calls"]
    assert [g["phase"] for g in call["guardrail"]] == ["request", "result"]
    assert [s["action"] for s in call["screened"]] == ["strip"]  # id 8 is no call of the list: its exchange's only
    assert [s["message_id"] for s in doc["exchanges"][0]["screened"]] == [7, 8]
    out = io.StringIO()
    print_session(Console(file=out, width=250, color_system=None), Session("s", events=events))
    lines = [line.strip() for line in out.getvalue().splitlines()]
    stripped = (
        'result screened, stripped before the client saw it: invisible zero-width at /content/0/text [3:4] "U+200B"'
    )
    assert lines.count(stripped) == 2  # under the exchange and under the call
    assert lines.count("guardrail on the request: allow (fine) -> passed, 1.5 ms") == 2
    assert lines.count('guardrail on the result: modify -> modified, 2.25 ms; result now {"content":[]}') == 2
    refused = (
        "result screened, refused: the client got an error instead: instructions authority-tag at /content/0/text [3:4]"
    )
    assert lines.count(refused) == 1


def test_a_lists_hidden_names_and_its_screened_definitions_are_shown_on_its_exchange() -> None:
    """policy.list_filtered (what the caller was not shown) and tool.definition findings (a description screen's
    hits and what each led to) were recorded but not printed."""
    hit = {"screen": "instructions", "rule": "authority-tag", "path": "/description", "start": 15, "end": 26}
    events = [
        {"type": "exchange.start", "exchange": "l1", "time": 1.0},
        {"type": "policy.list_filtered", "exchange": "l1", "time": 1.1, "method": "tools/list", "message_id": 1,
         "hidden": [f"t{i}" for i in range(12)]},
        {"type": "tool.definition", "exchange": "l1", "time": 1.1, "kind": "tool", "name": "plain", "fingerprint": "A",
         "pin": "new", "shown": True, "findings": []},
        {"type": "tool.definition", "exchange": "l1", "time": 1.1, "kind": "tool", "name": "notes", "fingerprint": "B",
         "pin": "new", "shown": False, "findings": [{**hit, "excerpt": "<IMPORTANT>", "action": "hide"}]},
    ]  # fmt: skip
    (x,) = session_doc(Session("s", events=events))["exchanges"]
    assert [d["name"] for d in x["definitions"]] == ["notes"]  # a definition nothing was found in: not repeated
    out = io.StringIO()
    print_session(Console(file=out, width=250, color_system=None), Session("s", events=events))
    lines = [line.strip() for line in out.getvalue().splitlines()]
    assert "tools/list filtered for the caller: 12 hidden (t0, t1, t2, t3, t4, t5, t6, t7, t8, t9, and 2 more)" in lines
    screened = "tool notes screened (withheld from the caller, pin new): instructions authority-tag at /description"
    assert screened + ' [15:26] "<IMPORTANT>" -> hide' in lines


def test_what_beside_its_rule_decided_a_call_is_printed_under_it() -> None:
    """policy.decision's grant, Kubernetes review, budget and approval were recorded; `sessions show` printed none."""
    events = _call_events("x1", 2.0, {"fingerprint": "A", "listed_at": 1}, 7)
    events[2] |= {"rule": "grant:g-1", "grant": {"id": "g-1", "reason": "INC-42", "approved_by": "carol", "until": 9.0},
                  "kubernetes": {"outcome": "allowed", "reason": "", "cached": True, "verb": "get", "resource": "pods"},
                  "budget": {"outcome": "counted", "store": "local", "limits": [{"limit": "10/1h", "count": 3}]},
                  "approval": {"id": "a-9", "state": "consumed", "by": "dave"}}  # fmt: skip
    plain = _call_events("x2", 3.0, {"fingerprint": "A", "listed_at": 1}, 8)
    doc = session_doc(Session("s", events=events + plain))
    assert [c["decision"]["rule"] for c in doc["calls"]] == ["grant:g-1", None]
    out = io.StringIO()
    print_session(Console(file=out, width=250, color_system=None), Session("s", events=events + plain))
    lines = [line.strip() for line in out.getvalue().splitlines() if line.strip().startswith("allowed by rule")]
    assert lines == [
        "allowed by rule grant:g-1: grant g-1 approved by carol (INC-42); kubernetes allowed: get pods (cached); "
        "budget 3 of 10/1h; approval a-9 consumed by dave"
    ]  # and nothing for a call its rule alone decided


def test_a_body_not_read_as_json_rpc_is_named_on_its_exchange() -> None:
    """mcp.request/mcp.response keep a parse error with the body as sent; `sessions show` printed nothing of it."""
    events = [
        {"type": "exchange.start", "exchange": "x1", "time": 1.0},
        {"type": "mcp.request", "exchange": "x1", "time": 1.0, "messages": [], "error": "Expecting value", "size": 9},
        {"type": "exchange.end", "exchange": "x1", "time": 1.1, "outcome": "denied", "status": 400, "duration_ms": 1},
    ]
    out = io.StringIO()
    print_session(Console(file=out, width=250, color_system=None), Session("s", events=events))
    assert "request body (9 bytes) not read as JSON-RPC: Expecting value" in out.getvalue()
