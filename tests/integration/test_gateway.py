"""The foundation through real parts: the mcp SDK client -> Envoy (wheel) -> processor -> mcp SDK server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import httpx
import zygote
from gateway_parts import SampleServer, open_session

from extproc.demo.mcp_client import call_tool, run_session
from extproc.reserved import server_unit

SECRET = "Bearer s3cr3t-token-value-never-stored"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return zygote.run_command([sys.executable, "-m", "extproc", *args], timeout=60)


def _messages(session, event_type: str) -> list[dict]:
    return [m for e in session.events if e["type"] == event_type for m in e["messages"]]


async def test_full_session_is_recorded_in_order(sample_server: SampleServer, start_gateway) -> None:
    gw = start_gateway([sample_server])
    result = await run_session(gw.url(), mode="legacy")  # the 2025 handshake; 2026-07-28 in test_mcp_2026.py
    assert result.tools == ["echo", "add", "count_slowly", "whoami"]
    assert result.echo["structuredContent"] == {"result": "hello"}
    if not sample_server.json_response:
        assert [p["progress"] for p in result.progress] == [1, 2, 3]  # streamed through Envoy as SSE
    gw.stop()  # SIGTERM: the processor flushes before exiting

    session = gw.session(result.session_id)
    assert session.problems == []
    unit = server_unit("demo", "", result.session_id)  # the server's id, in its server's and backend's unit
    assert session.id == unit
    assert {e["session"] for e in session.events} == {unit}

    # Client -> server: every POSTed JSON-RPC message, in the order the server received them.
    sent = [m.get("method") for m in _messages(session, "mcp.request")]
    seen = [r["method"] for r in sample_server.seen() if r["http_method"] == "POST"]
    assert sent == seen == ["initialize", "notifications/initialized", "tools/list", "tools/call", "tools/call"]
    # Server -> client: a response for every request id, plus the progress notifications when streaming.
    received = _messages(session, "mcp.response")
    assert sorted(m["id"] for m in received if "id" in m) == sorted(
        m["id"] for m in _messages(session, "mcp.request") if "id" in m
    )
    progress = [m for m in received if m.get("method") == "notifications/progress"]
    assert len(progress) == (0 if sample_server.json_response else 3)
    # GET (server stream) and DELETE (session end) are recorded too.
    methods = [e["method"] for e in session.events if e["type"] == "exchange.start"]
    assert "DELETE" in methods and methods[0] == "POST"
    assert all(e["outcome"] for e in session.events if e["type"] == "exchange.end")

    show = _cli("sessions", "show", result.session_id, "--dir", str(gw.store.root), "--json")
    calls = json.loads(show.stdout)["calls"]
    echo = next(c for c in calls if c["request"].get("params", {}).get("name") == "echo")
    assert echo["response"]["result"]["structuredContent"] == {"result": "hello"}
    assert _cli("sessions", "verify", result.session_id, "--dir", str(gw.store.root)).returncode == 0


async def test_verify_fails_after_one_byte_changes(start_mcp_server, start_gateway) -> None:
    gw = start_gateway([start_mcp_server("demo")])
    result = await run_session(gw.url())
    gw.stop()
    [stream] = (gw.store.root / result.session_id).glob("*.jsonl")
    data = bytearray(stream.read_bytes())
    at = data.index(b'"text":"hello"') + len(b'"text":"')
    data[at : at + 1] = b"j"  # "hello" -> "jello" in the recorded echo call
    stream.write_bytes(bytes(data))

    verify = _cli("sessions", "verify", result.session_id, "--dir", str(gw.store.root))
    assert verify.returncode == 1
    assert "hash chain broken" in verify.stdout


async def test_credentials_never_reach_the_store(start_mcp_server, start_gateway) -> None:
    gw = start_gateway([start_mcp_server("demo")])
    headers = {**ACCEPT, "authorization": SECRET, "cookie": "sid=cookie-secret", "x-api-key": "key-secret"}
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    r = httpx.post(gw.url(), json=body, headers=headers, timeout=10)
    assert r.status_code == 200
    gw.stop()
    stored = b"".join(p.read_bytes() for p in gw.store.root.rglob("*.jsonl"))
    assert b'"initialize"' in stored
    for secret in (b"s3cr3t-token-value", b"cookie-secret", b"key-secret"):
        assert secret not in stored
    assert b'"credentials_removed":["authorization","cookie","x-api-key"]' in stored


async def test_body_over_limit_gets_413_and_is_not_forwarded(start_mcp_server, start_gateway) -> None:
    server = start_mcp_server("demo")
    gw = start_gateway([server], limits={"max_request_body_bytes": 64 * 1024})
    big = {
        "jsonrpc": "2.0",
        "id": 9,
        "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x" * 100_000}},
    }
    r = httpx.post(gw.url(), json=big, headers=ACCEPT, timeout=10)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/json"
    assert r.json()["error"]["message"] == "request body too large"
    small = await call_tool(gw.url(), "echo", {"text": "y" * 1000})
    assert small["structuredContent"] == {"result": "y" * 1000}
    calls = [r for r in server.seen() if r["method"] == "tools/call"]
    assert len(calls) == 1  # only the small call arrived; the big one never left Envoy


async def test_malformed_json_rpc_is_refused_and_recorded(start_mcp_server, start_gateway) -> None:
    server = start_mcp_server("demo")
    gw = start_gateway([server])
    r = httpx.post(gw.url(), content=b'{"jsonrpc": "2.0", "method": ', headers=ACCEPT, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32700
    assert "not valid JSON-RPC" in r.json()["error"]["message"]
    assert server.seen() == []
    gw.stop()
    stored = b"".join(p.read_bytes() for p in gw.store.root.rglob("*.jsonl"))
    assert b'{\\"jsonrpc\\": \\"2.0\\", \\"method\\": ' in stored  # raw body kept, not dropped
    assert b'"outcome":"denied"' in stored


async def test_two_servers_each_get_only_their_own_traffic(start_mcp_server, start_gateway) -> None:
    alpha, beta = start_mcp_server("alpha"), start_mcp_server("beta")
    gw = start_gateway([alpha, beta], unix_socket=True)
    a = await call_tool(gw.url("alpha"), "echo", {"text": "to-alpha"})
    b = await call_tool(gw.url("beta"), "echo", {"text": "to-beta"})
    assert a["structuredContent"] == {"result": "to-alpha"}
    assert b["structuredContent"] == {"result": "to-beta"}
    for server, other in ((alpha, "to-beta"), (beta, "to-alpha")):
        seen = server.seen()
        assert seen, f"{server.name} saw nothing"
        assert other not in json.dumps(seen)
    assert httpx.post(f"{gw.endpoint}/gamma/mcp", json={}, headers=ACCEPT).status_code == 404
    gw.stop()
    servers = {
        e["server"] for s in gw.store.list_sessions() for e in gw.session(s).events if e["type"] == "exchange.start"
    }
    assert servers == {"alpha", "beta"}


async def test_processor_down_fails_closed(start_mcp_server, start_gateway) -> None:
    server = start_mcp_server("demo")
    gw = start_gateway([server])
    for p in gw.stack.processors:
        p.kill()
        p.wait()
    r = httpx.post(gw.url(), json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=ACCEPT, timeout=10)
    assert r.status_code >= 500
    assert server.seen() == []  # nothing passed unprocessed


def test_sigterm_lets_in_flight_exchange_finish(start_mcp_server, start_gateway) -> None:
    gw = start_gateway([start_mcp_server("demo")])
    headers = open_session(gw.url())
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "count_slowly", "arguments": {"n": 6, "delay": 0.15}, "_meta": {"progressToken": "p"}},
    }
    lines = []
    with httpx.stream("POST", gw.url(), json=call, headers=headers, timeout=20) as r:
        for line in r.iter_lines():
            lines.append(line)
            if '"progress":1' in line:  # the call is in flight: stop the processor now
                gw.stack.processors[0].send_signal(signal.SIGTERM)
    final = json.loads(next(line for line in reversed(lines) if line.startswith("data:"))[5:])
    assert final["result"]["structuredContent"] == {"result": "counted to 6"}
    assert gw.stack.processors[0].wait(20) == 0
    stored = b"".join(p.read_bytes() for p in gw.store.root.rglob("*.jsonl"))
    end = [json.loads(x) for x in stored.splitlines() if b'"exchange.end"' in x][-1]
    assert end["outcome"] == "complete"
    assert stored.count(b'"notifications/progress"') == 6  # every streamed event made it to disk before exit
