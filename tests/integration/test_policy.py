"""Policy through real Envoy: the mcp SDK client as alice, decisions enforced, lists filtered, records redacted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from gateway_parts import Gateway, SampleServer, open_session

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect
from extproc.launcher import wait_until

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, server/discover, ping, "notifications/*", tools/list, http/get,
                                        http/delete]}
  - name: eng-echo
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: [demo], tools: [echo]}
    arguments: {text: {max_length: 64}}
  - name: eng-count
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: [demo], tools: [count_slowly]}
  - name: nobody-adds
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [add]}
recording:
  - servers: [demo]
    defaults: true
"""


def _events(gw: Gateway) -> list[dict]:
    return [json.loads(x) for p in gw.store.root.rglob("*.jsonl") for x in p.read_bytes().splitlines()]


async def _denied(conn, tool: str, args: dict) -> str:
    with pytest.raises(Exception) as caught:  # the SDK raises its MCPError carrying the JSON-RPC error
        await conn.client.call_tool(tool, args)
    return str(caught.value)


async def test_allowed_denied_and_filtered(sample_server: SampleServer, start_authed, issuer: DevIssuer) -> None:
    gw = start_authed([sample_server], policy=POLICY)
    token = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    async with connect(gw.url(), token=token) as conn:
        listed = await conn.client.list_tools()
        assert sorted(t.name for t in listed.tools) == ["count_slowly", "echo"]  # add, whoami hidden
        ok = await conn.client.call_tool("echo", {"text": "hi"})
        assert ok.structured_content == {"result": "hi"}
        assert "nobody-adds" in await _denied(conn, "add", {"a": 1, "b": 2})
        assert "default-deny" in await _denied(conn, "echo", {"text": "x" * 100})  # argument constraint
        assert "default-deny" in await _denied(conn, "whoami", {})
    seen_calls = [r["tool"] for r in sample_server.seen() if r["method"] == "tools/call"]
    assert seen_calls == ["echo"]  # the denied calls never reached the server
    gw.stop()

    events = _events(gw)
    decisions = [(e["rule"], e["allowed"]) for e in events if e["type"] == "policy.decision"]
    assert ("nobody-adds", False) in decisions and ("eng-echo", True) in decisions
    assert ("default-deny", False) in decisions
    filtered = [e for e in events if e["type"] == "policy.list_filtered"]
    assert filtered and sorted(filtered[0]["hidden"]) == ["add", "whoami"]
    listing = [e["type"] for e in events if e["exchange"] == filtered[0]["exchange"]]
    assert listing[-1] == "exchange.end"  # what was hidden is part of the exchange, before its end
    denied_ends = [e for e in events if e["type"] == "exchange.end" and e["outcome"] == "denied"]
    assert len(denied_ends) == 3 and all(e["status"] == 403 for e in denied_ends)


async def test_batch_with_one_denied_element_is_refused_whole(start_mcp_server, start_authed, issuer) -> None:
    import httpx

    server = start_mcp_server("demo")
    gw = start_authed([server], policy=POLICY)
    token = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "a"}}},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1, "b": 1}}},
    ]
    headers = {"authorization": f"Bearer {token}", "accept": "application/json, text/event-stream"}
    r = httpx.post(gw.url(), json=batch, headers=headers, timeout=10)
    assert r.status_code == 403
    assert [e["id"] for e in r.json()] == [1, 2]
    assert all(e["error"]["code"] == -32003 and "nobody-adds" in e["error"]["message"] for e in r.json())
    assert server.seen() == []


async def test_recorded_secrets_are_redacted(start_mcp_server, start_authed, issuer) -> None:
    gw = start_authed([start_mcp_server("demo")], policy=POLICY)
    token = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    async with connect(gw.url(), token=token) as conn:
        echoed = await conn.client.call_tool("echo", {"text": "key AKIAIOSFODNN7EXAMPLE"})
    assert echoed.structured_content == {"result": "key AKIAIOSFODNN7EXAMPLE"}  # the client gets the real data
    gw.stop()
    stored = b"".join(p.read_bytes() for p in gw.store.root.rglob("*.jsonl"))
    assert b"AKIAIOSFODNN7EXAMPLE" not in stored
    assert b"[REDACTED:builtin-aws-access-key]" in stored
    events = _events(gw)
    request = next(e for e in events if e["type"] == "mcp.request" and e["redactions"])
    assert request["redactions"][0]["rule"] == "builtin-aws-access-key"
    assert request["body"] == {"raw_redacted": True}


async def test_policy_reload_while_a_session_is_open(start_mcp_server, start_authed, issuer, tmp_path: Path) -> None:
    server = start_mcp_server("demo")
    gw = start_authed([server], policy=POLICY)
    policy_file = Path(gw.config["policy"]["directory"]) / "policy.yaml"
    token = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    async with connect(gw.url(), token=token) as conn:
        assert (await conn.client.call_tool("echo", {"text": "before"})).structured_content == {"result": "before"}

        # A valid edit: echo becomes forbidden. The next call follows the new rule, in the same session.
        policy_file.write_text(POLICY.replace("name: nobody-adds", "name: nobody-echoes").replace("[add]", "[echo]"))
        wait_until(lambda: "policy reloaded" in gw.log.read_text(), 10, "the policy reload")
        assert "nobody-echoes" in await _denied(conn, "echo", {"text": "after"})

        # A broken edit: rejected, logged with its reason, and the last good policy stays in force.
        policy_file.write_text(POLICY + "  - name: broken\n    effect: maybe\n")
        wait_until(lambda: "policy reload rejected" in gw.log.read_text(), 10, "the rejected reload to be logged")
        assert "policy.yaml" in gw.log.read_text().split("policy reload rejected", 1)[1]
        assert "nobody-echoes" in await _denied(conn, "echo", {"text": "still"})
    echoes = [r for r in server.seen() if r["tool"] == "echo"]
    assert len(echoes) == 1


def test_filtered_json_list_has_a_correct_content_length(start_mcp_server, start_authed, issuer) -> None:
    import httpx

    gw = start_authed([start_mcp_server("demo", json_response=True)], policy=POLICY)
    headers = open_session(gw.url(), token=issuer.mint("alice", aud=gw.endpoint, groups=["eng"]))
    headers["accept-encoding"] = "identity"  # uncompressed, so the length the processor set is what arrives
    listed = httpx.post(gw.url(), json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers, timeout=10)
    assert listed.status_code == 200
    assert int(listed.headers["content-length"]) == len(listed.content)
    assert sorted(t["name"] for t in listed.json()["result"]["tools"]) == ["count_slowly", "echo"]


async def test_case_folded_keys_cannot_smuggle_a_call_past_the_policy(start_mcp_server, start_authed, issuer) -> None:
    import httpx

    server = start_mcp_server("demo")
    gw = start_authed([server], policy=POLICY)
    token = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    headers = {
        "authorization": f"Bearer {token}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
    }
    smuggled = (
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a"}},'
        b'"Params":{"name":"add","arguments":{"a":1,"b":1}}}'
    )
    r = httpx.post(gw.url(), content=smuggled, headers=headers, timeout=10)
    assert r.status_code == 400
    assert "ambiguous" in r.json()["error"]["message"]
    assert server.seen() == []
