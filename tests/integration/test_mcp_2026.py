"""MCP 2026-07-28 (stateless) beside the 2025 revisions, through real Envoy, with the official SDK on both ends."""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import httpx2
import pytest
from gateway_parts import ACCEPT, SampleServer
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ElicitResult

from extproc.demo.mcp_client import connect, run_session
from extproc.launcher import wait_until
from extproc.recording.replay import pair_messages


def _types(session) -> list[str]:
    return [e["type"] for e in session.events]


@pytest.mark.parametrize("mode", ["auto", "2026-07-28"])
async def test_default_client_speaks_2026_and_its_run_is_one_recording(
    sample_server: SampleServer, start_gateway, mode: str
) -> None:
    gw = start_gateway([sample_server])
    result = await run_session(gw.url(), mode=mode)
    assert result.protocol_version == "2026-07-28"
    assert result.tools == ["echo", "add", "count_slowly", "whoami"]
    assert result.echo["structuredContent"] == {"result": "hello"}
    gw.stop()

    session = gw.session(result.session_id)
    assert session.problems == []
    sent = [m["method"] for e in session.events if e["type"] == "mcp.request" for m in e["messages"]]
    seen = [r["method"] for r in sample_server.seen() if r["http_method"] == "POST"]
    assert sent == seen
    assert sent[-3:] == ["tools/list", "tools/call", "tools/call"]
    assert "initialize" not in sent
    starts = [e for e in session.events if e["type"] == "exchange.start"]
    assert len(starts) == len(sent)  # every exchange of the run in one recording
    print(sent)


POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [server/discover, initialize, "notifications/*", tools/list, resources/list,
                                        subscriptions/listen]}
  - name: eng-echo
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: [demo], tools: [echo, count_slowly]}
    arguments: {text: {max_length: 64, optional: true}}
  - name: whoami-everyone
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [whoami]}
  - name: nobody-adds
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [add]}
"""
V = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": V,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
}


def _raw_call(name: str, args: dict, msg_id: int = 7) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": msg_id,
        "method": "tools/call",
        "params": {"name": name, "arguments": args, "_meta": META},
    }


def _modern_headers(token: str, method: str = "tools/call", name: str | None = "echo", **extra: str) -> dict:
    out = {**ACCEPT, "authorization": f"Bearer {token}", "mcp-protocol-version": V, "mcp-method": method, **extra}
    if name is not None:
        out["mcp-name"] = name
    return out


async def _denied(conn, tool: str, args: dict) -> str:
    with pytest.raises(Exception) as caught:  # the SDK raises its MCPError carrying the JSON-RPC error
        await conn.client.call_tool(tool, args)
    return str(caught.value)


async def test_auto_client_is_decided_filtered_and_identified(
    sample_server: SampleServer, start_authed, issuer
) -> None:
    gw = start_authed([sample_server], policy=POLICY)
    token = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    async with connect(gw.url(), token=token) as conn:
        assert conn.client.protocol_version == V  # auto negotiated the stateless revision through the gateway
        listed = await conn.client.list_tools()
        assert sorted(t.name for t in listed.tools) == ["count_slowly", "echo", "whoami"]  # add hidden
        assert (await conn.client.call_tool("echo", {"text": "hi"})).structured_content == {"result": "hi"}
        assert "nobody-adds" in await _denied(conn, "add", {"a": 1, "b": 2})
        assert "default-deny" in await _denied(conn, "echo", {"text": "x" * 100})  # argument constraint
        who = (await conn.client.call_tool("whoami", {})).structured_content
        assert who is not None and who["user"] == "alice"  # the gateway's identity headers
        runs = list(conn.runs)
    gw.stop()
    assert len(runs) == 1  # the agent's whole run is one recording
    session = gw.session(runs[0])
    assert session.problems == []
    decisions = [e for e in session.events if e["type"] == "policy.decision"]
    assert [d["rule"] for d in decisions if not d["allowed"]] == ["nobody-adds", "default-deny"]
    assert any(e["type"] == "policy.list_filtered" and e["hidden"] == ["add"] for e in session.events)
    assert all(r["method"] != "tools/call" or r["tool"] != "add" for r in sample_server.seen())
    starts = [e for e in session.events if e["type"] == "exchange.start"]
    assert {s["principal"]["subject"] for s in starts} == {"alice"}


async def test_filtered_list_is_private_to_the_caller(start_mcp_server, start_authed, issuer) -> None:
    """A shared cache must never hand one identity's filtered list to another: the result says private."""
    gw = start_authed([start_mcp_server("demo", json_response=True)], policy=POLICY)
    token = issuer.mint("bob", aud=gw.endpoint)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
    r = httpx.post(gw.url(), json=body, headers=_modern_headers(token, "tools/list", None), timeout=10)
    assert r.status_code == 200, r.text
    result = r.json()["result"]
    assert [t["name"] for t in result["tools"]] == ["whoami"]
    assert result["cacheScope"] == "private"
    assert "ttlMs" in result  # the server's freshness hint is kept


@pytest.mark.parametrize(
    ("headers", "body", "code"),
    [
        pytest.param({"mcp-method": "tools/list"}, _raw_call("echo", {"text": "hi"}), -32020, id="method"),
        pytest.param({"mcp-name": "whoami"}, _raw_call("echo", {"text": "hi"}), -32020, id="name"),
        pytest.param({"mcp-protocol-version": "2025-11-25"}, _raw_call("echo", {"text": "hi"}), -32020, id="version"),
        pytest.param({"mcp-param-text": "other"}, _raw_call("echo", {"text": "hi"}), -32020, id="param"),
        pytest.param(
            {},
            {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {}}},
            -32602,
            id="missing-meta",
        ),
    ],
)
async def test_header_mismatch_never_reaches_the_server(
    start_mcp_server, start_authed, issuer, headers: dict, body: dict, code: int
) -> None:
    server = start_mcp_server("demo", json_response=True)
    gw = start_authed([server], policy=POLICY)
    token = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    r = httpx.post(gw.url(), json=body, headers={**_modern_headers(token), **headers}, timeout=10)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == code
    assert server.seen() == []
    gw.stop()
    ends = [json.loads(x) for p in gw.store.root.rglob("*.jsonl") for x in p.read_bytes().splitlines()]
    assert any(e["type"] == "exchange.end" and e["status"] == 400 for e in ends)  # refused, and recorded


async def test_duplicated_routing_header_is_refused(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo", json_response=True)
    gw = start_authed([server], policy=POLICY)
    token = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    headers = [*_modern_headers(token).items(), ("mcp-name", "echo")]
    r = httpx.post(gw.url(), content=json.dumps(_raw_call("echo", {"text": "hi"})), headers=headers, timeout=10)
    assert r.status_code == 400 and "more than once" in r.json()["error"]["message"]
    assert server.seen() == []


async def test_listen_only_to_what_the_caller_may_read(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo", json_response=True)
    gw = start_authed([server], policy=POLICY)
    token = issuer.mint("bob", aud=gw.endpoint)
    listen = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "subscriptions/listen",
        "params": {"_meta": META, "notifications": {"toolsListChanged": True, "resourceSubscriptions": ["demo://x"]}},
    }
    r = httpx.post(gw.url(), json=listen, headers=_modern_headers(token, "subscriptions/listen", None), timeout=10)
    assert r.status_code == 403, r.text
    assert "resources/read 'demo://x'" in r.json()["error"]["message"]
    assert server.seen() == []


async def test_runs_split_by_identity_gap_and_trace(start_mcp_server, start_authed, issuer) -> None:
    gw = start_authed(
        [start_mcp_server("demo", json_response=True)], policy=POLICY, gateway={"recording": {"run_idle_gap_s": 1.5}}
    )
    alice = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    bob = issuer.mint("bob", aud=gw.endpoint)

    def run_of(token: str, **headers: str) -> str:
        body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"_meta": META}}
        r = httpx.post(
            gw.url(), json=body, headers={**_modern_headers(token, "tools/list", None), **headers}, timeout=10
        )
        assert r.status_code == 200, r.text
        return r.headers["mcp-extproc-recording"]

    # Runs are windows of run_idle_gap_s aligned to the epoch: start just after a window opens, so the calls
    # below share it.
    wait_until(lambda: time.time() % 1.5 < 0.3, 3, "a fresh run window")
    first = run_of(alice)
    assert run_of(alice) == first
    assert run_of(bob) != first
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traced = run_of(alice, traceparent=trace)
    assert traced != first

    await asyncio.sleep(2)  # the window itself is what is tested
    assert run_of(alice) != first  # the next window: a new run
    assert run_of(alice, traceparent=trace) == traced  # one trace stays one run across the gap


MRTR_POLICY = POLICY.replace("tools: [echo, count_slowly]", "tools: [echo, count_slowly, approve]")


@pytest.mark.parametrize("progress", [False, True], ids=["json", "sse"])
async def test_multi_round_trip_is_one_call_and_bound_to_the_caller(
    start_mcp_server, start_authed, issuer, progress: bool
) -> None:
    server = start_mcp_server("demo", mrtr=True)
    gw = start_authed([server], policy=MRTR_POLICY)
    token = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    states: list[str] = []
    runs: list[str] = []

    async def tap(response: httpx2.Response) -> None:
        await response.aread()
        runs.append(response.headers["mcp-extproc-recording"])
        if b'"requestState"' in response.content:
            states.extend(re.findall(r'"requestState":"([^"]+)"', response.text))

    async def accept(ctx, params):
        return ElicitResult(action="accept", content={"ok": True})

    notes: list[float] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        notes.append(value)

    async with httpx2.AsyncClient(
        headers={"authorization": f"Bearer {token}"}, event_hooks={"response": [tap]}
    ) as http:
        async with Client(
            streamable_http_client(gw.url(), http_client=http), elicitation_callback=accept, cache=None
        ) as client:
            result = await client.call_tool(
                "approve", {"action": "deploy"}, progress_callback=on_progress if progress else None
            )
    # The server got its own state back (it decrypts and reads it), the client only ever held the sealed one.
    assert result.structured_content == {"result": "deploy: approved (state pending:deploy)"}
    assert states and all(s.startswith("mxs1.") for s in states)
    if progress:
        assert notes  # streamed through the rewriter as SSE

    # Another identity replaying alice's round is refused before the server sees it.
    seen_before = len(server.seen())
    bob = issuer.mint("bob", aud=gw.endpoint, groups=["eng"])
    retry = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {
            "name": "approve",
            "arguments": {"action": "deploy"},
            "requestState": states[0],
            "inputResponses": {"approval": {"action": "accept", "content": {"ok": True}}},
            "_meta": META,
        },
    }
    r = httpx.post(gw.url(), json=retry, headers=_modern_headers(bob, name="approve"), timeout=10)
    assert r.status_code == 403 and "request state" in r.json()["error"]["message"]
    forged = {**retry, "params": {**retry["params"], "requestState": "mxs1.AAAA." + states[0].split(".", 2)[2]}}
    r = httpx.post(gw.url(), json=forged, headers=_modern_headers(token, name="approve"), timeout=10)
    assert r.status_code == 403
    assert len(server.seen()) == seen_before
    gw.stop()

    # Both rounds are in alice's one recorded run: the input_required result, then the retry carrying its state.
    [run] = set(runs)
    session = gw.session(run)
    assert session.problems == []
    calls = [
        m
        for e in session.events
        if e["type"] == "mcp.request"
        for m in e["messages"]
        if m.get("params", {}).get("name") == "approve"
    ]
    assert len(calls) == 2 and "requestState" not in calls[0]["params"] and "requestState" in calls[1]["params"]
    asked = [
        m for e in session.events if e["type"] == "mcp.response" for m in e["messages"] if m.get("id") == calls[0]["id"]
    ]
    assert asked[0]["result"]["resultType"] == "input_required"
    # `sessions show` lists the retry as the second round of the same call.
    [approve] = [c for c in pair_messages(session) if c["request"].get("params", {}).get("name") == "approve"]
    assert [r["request"]["id"] for r in approve["rounds"]] == [calls[1]["id"]]
    assert approve["rounds"][0]["response"]["result"]["structuredContent"]["result"].startswith("deploy: approved")


async def test_listen_stream_is_recorded_with_its_notifications(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo", json_response=True)
    gw = start_authed([server], policy=POLICY)
    token = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    listen = {
        "jsonrpc": "2.0",
        "id": 4,
        "method": "subscriptions/listen",
        "params": {"_meta": META, "notifications": {"toolsListChanged": True}},
    }
    headers = _modern_headers(token, "subscriptions/listen", None)
    async with httpx.AsyncClient(timeout=10) as client:
        async with client.stream("POST", gw.url(), json=listen, headers=headers) as r:
            assert r.status_code == 200
            run = r.headers["mcp-extproc-recording"]
            async for line in r.aiter_lines():  # the server acknowledges the subscription on the stream
                if "notifications/subscriptions/acknowledged" in line:
                    break
    gw.stop()
    session = gw.session(run)
    methods = [m.get("method") for e in session.events if e["type"] == "mcp.response" for m in e["messages"]]
    assert "notifications/subscriptions/acknowledged" in methods
    decided = [e["call"] for e in session.events if e["type"] == "policy.decision"]
    assert any(c.startswith("subscriptions/listen") for c in decided) and any(
        c.startswith("tools/list") for c in decided
    )
