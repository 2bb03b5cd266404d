"""Re-drive: what a recording says the gateway allowed, what today's policy allows, and what is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from extproc.audit.redrive import _routing_headers, _without_request_state, recorded_verdicts, redrive
from extproc.authn.principal import Principal
from extproc.policy.loader import load_policy
from extproc.recording.replay import Session

V = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": V, "io.modelcontextprotocol/clientCapabilities": {}}
ALLOW_ALL = """
apiVersion: mcp-extproc/v1
rules:
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
"""
OPERATOR = Principal(issuer="local-cli", subject="op", username="op")


def _exchange(n: int, messages: list[dict[str, Any]], decisions: list[tuple[Any, bool]], outcome: str) -> list[dict]:
    ex = f"x{n}"
    events: list[dict[str, Any]] = [
        {"type": "exchange.start", "exchange": ex, "time": n, "server": "alpha", "headers": {"mcp-x-planted": "1"}},
        {"type": "mcp.request", "exchange": ex, "time": n, "messages": messages},
    ]
    events += [
        {"type": "policy.decision", "exchange": ex, "time": n, "message_id": i, "allowed": ok, "rule": "r", "call": "c"}
        for i, ok in decisions
    ]
    return [*events, {"type": "exchange.end", "exchange": ex, "time": n, "outcome": outcome}]


def test_a_request_counts_as_allowed_only_with_its_own_allowing_decision_in_an_unrefused_exchange(
    tmp_path: Path,
) -> None:
    read = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "x://secret"}}
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    listed = {"jsonrpc": "2.0", "id": 3, "method": "tools/list"}
    undecided = {"jsonrpc": "2.0", "id": 4, "method": "prompts/get", "params": {"name": "p"}}
    events = [
        *_exchange(1, [read, ping], [(1, False), (2, True)], "denied"),  # a batch: one denial refuses it whole
        *_exchange(2, [listed], [(3, True)], "complete"),
        *_exchange(3, [undecided], [], "complete"),
    ]
    session = Session("s", events=events)
    verdicts = recorded_verdicts(session)
    assert verdicts[("x2", "3")] is None
    assert "refused when recorded" in (verdicts[("x1", "1")] or "")
    assert "refused when recorded" in (verdicts[("x1", "2")] or "")  # allowed itself, refused with its batch
    assert ("x3", "4") not in verdicts

    # Nothing refused or undecided is sent: the target is a closed port, so anything sent would be "failed".
    (tmp_path / "policy.yaml").write_text(ALLOW_ALL)
    policy = load_policy(tmp_path)
    kept = [*events[:5], *events[9:]]  # the refused batch and the undecided request
    outcomes = redrive(Session("s", events=kept), "http://127.0.0.1:9/mcp", set(), policy=policy, operator=OPERATOR)
    assert [(o.method, o.verdict) for o in outcomes] == [
        ("resources/read", "skipped"),
        ("ping", "skipped"),
        ("prompts/get", "skipped"),
    ]
    assert outcomes[2].differences == ["no recorded policy decision allowed it"]


def test_stateless_requests_lose_their_sealed_state_and_get_headers_from_the_body() -> None:
    req = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": "approve", "arguments": {"action": "x"}, "requestState": "mxs1.sealed", "_meta": META},
    }
    stripped = _without_request_state(req)
    assert "requestState" not in stripped["params"] and stripped["params"]["name"] == "approve"
    assert "requestState" in req["params"]  # the recording itself is untouched
    headers = _routing_headers(stripped, {})
    assert headers == {"mcp-method": "tools/call", "mcp-protocol-version": V, "mcp-name": "approve"}
    schema = {"type": "object", "properties": {"action": {"type": "string", "x-mcp-header": "Action"}}}
    assert _routing_headers(stripped, {"approve": schema})["mcp-param-action"] == "x"


def test_a_recorded_tool_call_whose_params_are_no_object_is_skipped_with_its_reason(tmp_path: Path) -> None:
    odd = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": [1, 2]}
    (tmp_path / "policy.yaml").write_text(ALLOW_ALL)
    session = Session("s", events=_exchange(1, [odd], [(5, True)], "complete"))
    outcomes = redrive(session, "http://127.0.0.1:9/mcp", set(), policy=load_policy(tmp_path), operator=OPERATOR)
    assert [(o.method, o.name, o.verdict) for o in outcomes] == [("tools/call", "", "skipped")]
    assert outcomes[0].differences == [
        "denied by today's policy for op (rule 'default-deny': tools/call without a name)"
    ]


def test_requests_recorded_at_shape_or_metadata_are_skipped_with_the_level(tmp_path: Path) -> None:
    call = {
        "jsonrpc": "2.0",
        "id": 5,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"t": "[shape:"}},
    }
    (tmp_path / "policy.yaml").write_text(ALLOW_ALL)
    shape = _exchange(1, [call], [(5, True)], "complete")
    shape[0]["capture"] = "shape"
    per_tool = _exchange(2, [{**call, "id": 6}], [(6, True)], "complete")
    per_tool[1]["body"] = {"capture": "metadata"}  # a stricter per-tool level marks the call's bodies
    session = Session("s", events=[*shape, *per_tool])
    outcomes = redrive(session, "http://127.0.0.1:9/mcp", {"echo"}, policy=load_policy(tmp_path), operator=OPERATOR)
    assert [o.verdict for o in outcomes] == ["skipped", "skipped"]
    assert [o.differences[0].split(":")[0] for o in outcomes] == [
        "recorded at capture level shape",
        "recorded at capture level metadata",
    ]
