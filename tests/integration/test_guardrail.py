"""A server's outside guardrail through real Envoy, the official SDK client and the sample server: deny, modify (the
modified call decided by the policy again), timeout failing closed, fail open, and every answer on the record."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from gateway_parts import Gateway, recording_key
from guardrail_server import MODIFIED_TEXT, GuardrailServer
from recording_helpers import cli

from extproc.demo.mcp_client import connect

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: allow-all
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
  - name: no-forbidden-echo
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: ["*"], tools: [echo]}
    arguments:
      text: {pattern: "(?s).*forbidden.*", optional: true}
"""


def _start(start_mcp_server, start_authed, guard: GuardrailServer, tmp_path: Path, **over: Any) -> tuple[Gateway, Any]:  # type: ignore[no-untyped-def]
    server = start_mcp_server("demo", False)
    token = tmp_path / "guard-token"
    token.write_text("guard-s3cret\n")
    guardrail = {"url": guard.url, "timeout_ms": 300, "token_file": str(token), **over}
    entry = {"name": "demo", "upstream": server.upstream, "guardrail": guardrail}
    return start_authed([server], policy=POLICY, gateway={"server_entries": [entry]}), server


def _called(server: Any, tool: str) -> list[dict[str, Any]]:
    return [r for r in server.seen() if r["tool"] == tool]


async def test_deny_modify_and_the_record(start_mcp_server, start_authed, issuer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with GuardrailServer({"add": "deny", "echo": "modify", "whoami": "allow"}) as guard:
        gw, server = _start(start_mcp_server, start_authed, guard, tmp_path)
        token = issuer.mint("alice", aud=gw.endpoint, groups=("eng",))
        async with connect(gw.url(), token=token, mode="legacy") as conn:
            await conn.client.list_tools()
            with pytest.raises(Exception, match="denied by the guardrail"):
                await conn.client.call_tool("add", {"a": 1, "b": 2})
            echoed = await conn.client.call_tool("echo", {"text": "the original"})
            assert echoed.structured_content == {"result": MODIFIED_TEXT}  # the server ran the modified call
            assert (await conn.client.call_tool("whoami", {})).structured_content["user"] == "alice"
            guard.modified_text = "now forbidden"  # a modification the policy denies: decided again, refused
            with pytest.raises(Exception, match="no-forbidden-echo"):
                await conn.client.call_tool("echo", {"text": "harmless"})
            unit = recording_key(conn.session_id)
        assert _called(server, "add") == []  # the denied call never reached the server
        assert len(_called(server, "echo")) == 1
        gw.stop()

    asked = {q["name"]: q for q in guard.questions}
    assert asked.keys() == {"add", "echo", "whoami"}  # tools/call only (the default methods); never the lists
    q = asked["whoami"]
    assert q["who"]["subject"] == "alice" and q["who"]["groups"] == ["eng"] and q["server"] == "demo"
    assert q["phase"] == "request" and q["exchange"] and q["definition"]["fingerprint"].startswith("sha256:")
    assert set(guard.authorization) == {"Bearer guard-s3cret"}
    session = gw.session(unit)
    assert session.problems == []
    verdicts = [e for e in session.events if e["type"] == "guardrail.verdict"]
    assert [(v["verdict"], v["outcome"]) for v in verdicts] == [
        ("deny", "refused"), ("modify", "modified"), ("allow", "passed"), ("modify", "modified"),
    ]  # fmt: skip
    assert verdicts[1]["arguments"] == {"text": MODIFIED_TEXT} and verdicts[0]["latency_ms"] > 0
    decisions = [e for e in session.events if e["type"] == "policy.decision" and "'echo'" in e["call"]]
    assert [d["allowed"] for d in decisions] == [True, True, True, False]  # each modified call decided again
    lines = [ln for ln in gw.log.read_text().splitlines() if "access" in ln and "tool=add" in ln]
    assert lines and "guardrail_ms=" in lines[0]  # its latency is on the access line too


@pytest.mark.parametrize("on_error", ["closed", "open"])
@pytest.mark.parametrize("failure", ["slow", "broken", "nonsense"])
async def test_no_valid_answer_fails_closed_or_open(
    start_mcp_server, start_authed, issuer, tmp_path, on_error: str, failure: str
) -> None:  # type: ignore[no-untyped-def]
    with GuardrailServer({"add": failure}, slow_s=1.0) as guard:
        gw, server = _start(start_mcp_server, start_authed, guard, tmp_path, on_error=on_error)
        token = issuer.mint("alice", aud=gw.endpoint)
        async with connect(gw.url(), token=token, mode="legacy") as conn:
            if on_error == "closed":
                with pytest.raises(Exception, match="guardrail unavailable"):
                    await conn.client.call_tool("add", {"a": 1, "b": 2})
            else:
                assert (await conn.client.call_tool("add", {"a": 1, "b": 2})).structured_content == {"result": 3}
            unit = recording_key(conn.session_id)
        assert len(_called(server, "add")) == (0 if on_error == "closed" else 1)
        gw.stop()
    (verdict,) = [e for e in gw.session(unit).events if e["type"] == "guardrail.verdict"]
    expected = "refused" if on_error == "closed" else "passed (fail open)"
    assert verdict["verdict"] == "error" and verdict["outcome"] == expected and verdict["reason"]


async def test_results_asked_before_the_client_gets_them_json_and_sse(  # type: ignore[no-untyped-def]
    start_mcp_server, start_authed, issuer
) -> None:
    """``results: true``: each result is asked about before the client gets it; deny, modify and no answer (fail
    closed) replace it, for a JSON body (buffered) and an SSE body (each event held until complete)."""
    with GuardrailServer({}, result_rules={"add": "deny", "echo": "modify", "whoami": "broken"}) as guard:
        servers = [start_mcp_server("demo", False), start_mcp_server("jdemo", True)]
        guardrail = {"url": guard.url, "timeout_ms": 1000, "results": True}
        entries = [{"name": s.name, "upstream": s.upstream, "guardrail": guardrail} for s in servers]
        gw = start_authed(servers, policy=POLICY, gateway={"server_entries": entries})
        token = issuer.mint("alice", aud=gw.endpoint)
        units = []
        for name in ("demo", "jdemo"):
            async with connect(gw.url(name), token=token, mode="legacy") as conn:
                with pytest.raises(Exception, match="denied by the guardrail"):
                    await conn.client.call_tool("add", {"a": 1, "b": 2})
                echoed = await conn.client.call_tool("echo", {"text": "the original"})
                assert echoed.structured_content == {"result": MODIFIED_TEXT}  # the guardrail's result
                with pytest.raises(Exception, match="guardrail unavailable"):
                    await conn.client.call_tool("whoami", {})
                units.append(recording_key(conn.session_id, name))
        for s in servers:
            assert len(_called(s, "add")) == 1  # asked after the server ran it: the result is what was judged
        gw.stop()

    results = [q for q in guard.questions if q["phase"] == "result"]
    assert [(q["server"], q["name"]) for q in results] == [
        (s, t) for s in ("demo", "jdemo") for t in ("add", "echo", "whoami")
    ]
    assert results[0]["result"]["structuredContent"] == {"result": 3} and results[0]["arguments"] == {"a": 1, "b": 2}
    for unit in units:
        session = gw.session(unit)
        assert session.problems == []
        verdicts = [e for e in session.events if e["type"] == "guardrail.verdict" and e["phase"] == "result"]
        assert [(v["verdict"], v["outcome"]) for v in verdicts] == [
            ("deny", "refused"), ("modify", "modified"), ("error", "refused"),
        ]  # fmt: skip
        assert verdicts[1]["result"]["structuredContent"] == {"result": MODIFIED_TEXT}
        sent = [e for e in session.events if e["type"] == "mcp.response" and e["messages"]]
        assert any("the original" in str(e["messages"]) for e in sent)  # the record keeps what the server sent
    shown = cli("sessions", "show", units[1], "--dir", gw.config["recording"]["directory"])
    assert shown.returncode == 0, shown.stdout + shown.stderr
    lines = [line.strip() for line in shown.stdout.splitlines()]  # under each exchange and each call
    for verdict in ("deny (rule deny for add) -> refused", "modify (rule modify for echo) -> modified"):
        assert sum(line.startswith(f"guardrail on the result: {verdict}, ") for line in lines) == 2, shown.stdout
    assert (
        sum(line.startswith("guardrail on the request: allow (rule allow for echo) -> passed") for line in lines) == 2
    )
