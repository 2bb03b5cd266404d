"""Envoy at the edge: exact MCP paths, allowed methods, header spellings, Host and Origin, encoded responses.

Every request goes through real Envoy and the processor to a real SDK server; raw paths are sent with http.client
because httpx normalizes ``..`` before sending.
"""

from __future__ import annotations

import http.client
import json
from urllib.parse import urlsplit

import httpx
import pytest
from gateway_parts import ACCEPT, Gateway, SampleServer, open_session

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def _raw(gw: Gateway, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> tuple:
    """Send exactly ``path`` (no client-side normalization); returns (status, headers, body)."""
    u = urlsplit(gw.endpoint)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def _events(gw: Gateway) -> list[dict]:
    return [json.loads(x) for p in gw.store.root.rglob("*.jsonl") for x in p.read_bytes().splitlines()]


# --- item 3: paths and methods ---------------------------------------------------------------------------------


BYPASSES = [
    "/demo/mcp/../../admin/users?delete=all",
    "/demo/mcp/../x",
    "/demo/mcp/",
    "/demo/mcp/x",
    "/demo/mcpx",
    "/demo/mcp%2F..%2Fadmin",
    "/demo/mcp/%2e%2e/admin",
]


def test_only_the_exact_mcp_path_reaches_the_server(start_mcp_server, start_gateway) -> None:
    server = start_mcp_server("demo")
    gw = start_gateway([server])
    for path in BYPASSES:
        status, _, _ = _raw(gw, "GET", path)
        assert status in (400, 404), (path, status)  # 400: escaped slash rejected by Envoy; 404: no server there
        status, _, _ = _raw(gw, "POST", path, ACCEPT, json.dumps(INIT).encode())
        assert status in (400, 404), (path, status)
    assert server.seen() == []


def test_normalized_spellings_of_the_mcp_path_still_work(start_mcp_server, start_gateway) -> None:
    server = start_mcp_server("demo", True)
    gw = start_gateway([server])
    for path in ("//demo//mcp", "/demo/./mcp?x=1", "/other/../demo/mcp"):
        status, _, body = _raw(gw, "POST", path, ACCEPT, json.dumps(INIT).encode())
        assert status == 200, (path, body)
    assert len(server.seen()) == 3


def test_other_methods_get_405_with_allow_and_never_reach_the_server(start_mcp_server, start_gateway) -> None:
    server = start_mcp_server("demo")
    gw = start_gateway([server])
    for method in ("PUT", "PATCH", "OPTIONS", "TRACE", "HEAD"):
        status, headers, _ = _raw(gw, method, "/demo/mcp", ACCEPT)
        assert status == 405, (method, status)
        assert headers["allow"] == "POST, GET, DELETE"
    assert server.seen() == []


POLICY_NO_STREAMS = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, ping, "notifications/*", tools/list]}
  - name: eng-streams
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: ["*"], methods: [http/get, http/delete]}
recording:
  - servers: ["*"]
    redact:
      - name: github-tokens
        pattern: "ghp_[A-Za-z0-9]{36}"
"""


def test_get_and_delete_are_decided_by_policy_and_405_recorded(
    start_mcp_server, start_authed, issuer: DevIssuer
) -> None:
    server = start_mcp_server("demo")
    gw = start_authed([server], policy=POLICY_NO_STREAMS)
    guest, eng = issuer.mint("guest", aud=gw.endpoint), issuer.mint("erin", aud=gw.endpoint, groups=["eng"])
    h = open_session(gw.url(), guest)
    assert httpx.get(gw.url(), headers=h, timeout=10).status_code == 403
    assert httpx.delete(gw.url(), headers=h, timeout=10).status_code == 403
    assert httpx.request("PUT", gw.url(), headers=h, timeout=10).status_code == 405
    h2 = open_session(gw.url(), eng)
    assert httpx.delete(gw.url(), headers=h2, timeout=10).status_code == 200
    seen = [r["http_method"] for r in server.seen()]
    assert seen.count("DELETE") == 1 and "GET" not in seen and "PUT" not in seen
    gw.stop()

    events = _events(gw)
    decisions = [(e["call"].split(" ")[0], e["rule"], e["allowed"]) for e in events if e["type"] == "policy.decision"]
    assert ("http/get", "default-deny", False) in decisions
    assert ("http/delete", "default-deny", False) in decisions
    assert ("http/delete", "eng-streams", True) in decisions
    ends = [e["detail"] for e in events if e["type"] == "exchange.end" and e["outcome"] == "denied"]
    assert any(d.startswith("MethodNotAllowed") for d in ends)


# --- item 8: underscore spellings of identity headers ------------------------------------------------------------


def test_underscore_header_names_are_rejected(start_mcp_server, start_gateway) -> None:
    server = start_mcp_server("demo", True)
    gw = start_gateway([server])
    for header in ("x_mcp_user", "x_mcp_groups", "X_Mcp_User"):
        try:
            status = httpx.post(gw.url(), json=INIT, headers={**ACCEPT, header: "alice"}, timeout=10).status_code
        except httpx.TransportError:  # Envoy rejects at the codec: HTTP/1.1 connections are closed unanswered
            status = 400
        assert status == 400, header
    assert server.seen() == []
    assert httpx.post(gw.url(), json=INIT, headers=ACCEPT, timeout=10).status_code == 200  # guards the test


# --- item 12: Host and Origin --------------------------------------------------------------------------------


def test_server_with_dns_rebinding_protection_works_by_public_name(start_mcp_server, start_gateway) -> None:
    server = start_mcp_server("demo", True, "--dns-rebinding-protection")
    gw = start_gateway([server])
    r = httpx.post(gw.url(), json=INIT, headers={**ACCEPT, "host": "gateway.example.com"}, timeout=10)
    assert r.status_code == 200, r.text
    (seen,) = server.seen()
    assert seen["headers"]["host"] == server.upstream  # the server's own name, which it accepts
    gw.stop()
    (start,) = [e for e in _events(gw) if e["type"] == "exchange.start"]
    assert start["headers"][":authority"] == "gateway.example.com"  # the recording keeps what the client sent


def test_server_host_client_keeps_the_clients_host(start_mcp_server, start_gateway) -> None:
    server = start_mcp_server("demo", True)
    gw = start_gateway([server], server_settings={"host": "client"})
    r = httpx.post(gw.url(), json=INIT, headers={**ACCEPT, "host": "gateway.example.com"}, timeout=10)
    assert r.status_code == 200
    assert server.seen()[0]["headers"]["host"] == "gateway.example.com"


def test_foreign_origin_is_refused_without_auth_too(start_mcp_server, start_gateway) -> None:
    server = start_mcp_server("demo", True)
    gw = start_gateway([server], listen={"allowed_origins": ["https://app.example.com"]})
    evil = httpx.post(gw.url(), json=INIT, headers={**ACCEPT, "origin": "http://evil.example"}, timeout=10)
    assert evil.status_code == 403
    own = httpx.post(gw.url(), json=INIT, headers={**ACCEPT, "origin": gw.endpoint}, timeout=10)
    assert own.status_code == 200
    listed = httpx.post(gw.url(), json=INIT, headers={**ACCEPT, "origin": "https://app.example.com"}, timeout=10)
    assert listed.status_code == 200
    assert len(server.seen()) == 2


# --- item 1: compressed responses --------------------------------------------------------------------------------

GUEST_POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, ping, "notifications/*", tools/list, http/get, http/delete]}
  - name: guest-tools
    effect: allow
    subjects: {users: [guest]}
    targets: {servers: [demo], tools: [whoami, echo]}
recording:
  - servers: ["*"]
    redact:
      - name: github-tokens
        pattern: "ghp_[A-Za-z0-9]{36}"
"""
TOKEN = "ghp_" + "A1b2" * 9


async def test_gzip_server_lists_are_filtered_and_records_redacted(
    start_mcp_server, start_authed, issuer: DevIssuer
) -> None:
    server = start_mcp_server("demo", True, "--gzip", "negotiated")
    gw = start_authed([server], policy=GUEST_POLICY)
    token = issuer.mint("guest", aud=gw.endpoint)
    h = {**open_session(gw.url(), token), "accept-encoding": "gzip"}
    r = httpx.post(gw.url(), json=LIST, headers=h, timeout=10)
    # Compressed for the client (by Envoy, after the processor filtered it), and filtered.
    assert r.headers.get("content-encoding") == "gzip"
    assert sorted(t["name"] for t in r.json()["result"]["tools"]) == ["echo", "whoami"]
    call = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": TOKEN}}}
    r = httpx.post(gw.url(), json=call, headers=h, timeout=10)
    assert TOKEN in r.text  # the caller gets the server's answer; only the recording is redacted
    assert all("accept-encoding" not in s["headers"] for s in server.seen())
    async with connect(gw.url(), token=token) as conn:  # the SDK client (httpx: gzip by default) sees the same
        assert sorted(t.name for t in (await conn.client.list_tools()).tools) == ["echo", "whoami"]
    gw.stop()

    stored = b"".join(p.read_bytes() for p in gw.store.root.rglob("*.jsonl"))
    assert TOKEN.encode() not in stored and b"[REDACTED:github-tokens]" in stored
    assert b'"hidden":["add","count_slowly"]' in stored  # the list was filtered, and recorded as such


async def test_response_the_processor_cannot_decode_is_refused_and_recorded(
    start_mcp_server, start_authed, issuer: DevIssuer
) -> None:
    server = start_mcp_server("demo", True, "--gzip", "always")  # compresses whatever the request says
    gw = start_authed([server], policy=GUEST_POLICY)
    token = issuer.mint("guest", aud=gw.endpoint)
    init = httpx.post(gw.url(), json=INIT, headers={**ACCEPT, "authorization": f"Bearer {token}"}, timeout=10)
    assert init.status_code == 502
    assert init.json()["error"]["message"] == "MCP server sent an encoded response the gateway cannot inspect"
    gw.stop()
    ends = [e for e in _events(gw) if e["type"] == "exchange.end"]
    assert [(e["outcome"], e["status"]) for e in ends] == [("denied", 502)]
    assert ends[0]["detail"].startswith("EncodedResponse")


def test_sample_server_really_compresses_without_the_gateway(start_mcp_server) -> None:
    """Guards the tests above: the server does gzip when asked (and always, in "always" mode)."""
    server: SampleServer = start_mcp_server("demo", True, "--gzip", "negotiated")
    r = httpx.post(server.mcp_url, json=INIT, headers={**ACCEPT, "accept-encoding": "gzip"}, timeout=10)
    assert r.headers.get("content-encoding") == "gzip"


# --- item 13: a port held by another process is a start-up error ---------------------------------------------


def test_a_second_gateway_cannot_share_the_ports_of_a_running_one(start_mcp_server, start_gateway) -> None:
    """Both Envoy and gRPC used to set SO_REUSEPORT: a second process binding the same port started "fine" and the
    kernel split connections between the two, so Envoy's streams could meet another processor (or the other
    Envoy's listener: a 404 to a gRPC call, i.e. a 500 to the client)."""
    server = start_mcp_server("demo", True)
    first = start_gateway([server])
    with pytest.raises(RuntimeError, match="processor exited"):
        start_gateway([server], processor={"address": first.config["processor"]["address"]})
    with pytest.raises(RuntimeError, match="Envoy exited"):
        start_gateway([server], listen={"port": first.config["listen"]["port"]})
    for _ in range(20):  # every connection still reaches the first gateway's own parts
        assert httpx.post(first.url(), json=INIT, headers=ACCEPT, timeout=10).status_code == 200


# --- graceful drain ------------------------------------------------------------------------------------------


async def test_stop_drains_so_an_open_sse_stream_finishes_and_is_recorded_complete(
    start_mcp_server, start_gateway
) -> None:
    import asyncio

    import httpx2

    from extproc.demo.mcp_client import connect
    from extproc.launcher import wait_until

    server = start_mcp_server("demo")
    gw = start_gateway([server], edge={"drain_time_s": 20})
    results: list[object] = []

    async def slow_call() -> None:
        try:
            async with connect(gw.url()) as conn:
                # The SDK validates a structured result against the tool's outputSchema, listing the tools after the
                # result when it has not yet: listed now, before the drain, so no new request meets the draining gateway
                await conn.client.list_tools()
                results.append(
                    (await conn.client.call_tool("count_slowly", {"n": 20, "delay": 0.15})).structured_content
                )
        except* httpx2.TransportError:  # what the client sends as it closes meets a gateway that is stopping
            pass

    slow = asyncio.create_task(slow_call())
    opened = lambda: any(r["tool"] == "count_slowly" for r in server.seen())  # noqa: E731
    await asyncio.to_thread(wait_until, opened, 20, "the call's stream to be open")
    await asyncio.to_thread(gw.stop)  # drain, then stop Envoy, then the processor
    await slow
    assert results == [{"result": "counted to 20"}]  # the open stream ran to its end through the drain
    events = _events(gw)
    (call_exchange,) = {e["exchange"] for e in events if e["type"] == "mcp.request" and "count_slowly" in str(e)}
    ends = [e for e in events if e["type"] == "exchange.end" and e["exchange"] == call_exchange]
    assert [e["outcome"] for e in ends] == ["complete"]


# --- circuit breakers ----------------------------------------------------------------------------------------


async def test_open_streams_per_server_are_limited_by_the_number_in_gateway_yaml(
    start_mcp_server, start_gateway
) -> None:
    """Each SSE stream holds a connection to its (HTTP/1.1) server for its whole life: limits.max_concurrent_streams
    streams are open per server, as many more wait for a free connection, and the next is refused at once (503).
    The processor's cluster holds that for every server, so another server is not starved."""
    import asyncio

    from extproc.launcher import wait_until

    demo = start_mcp_server("demo")
    other = start_mcp_server("other")
    gw = start_gateway([demo, other], limits={"max_concurrent_streams": 16})
    h = open_session(gw.url())

    def call(i: int) -> dict:
        args = {"n": 100, "delay": 0.5}
        return {
            "jsonrpc": "2.0",
            "id": 100 + i,
            "method": "tools/call",
            "params": {"name": "count_slowly", "arguments": args},
        }

    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=64)) as client:
        streams = [client.stream("POST", gw.url(), json=call(i), headers=h) for i in range(16)]
        opened = [await s.__aenter__() for s in streams]
        waiting = [asyncio.create_task(client.post(gw.url(), json=call(50 + i), headers=h)) for i in range(16)]
        try:
            assert [r.status_code for r in opened] == [200] * 16
            stats = (
                f"http://127.0.0.1:{gw.config['admin']['port']}/stats?filter=mcp_server_demo.upstream_rq_pending_active"
            )

            def queued() -> bool:
                return httpx.get(stats, timeout=5).text.strip().endswith(": 16")

            await asyncio.to_thread(wait_until, queued, 30, "16 requests waiting in Envoy's queue")
            over = await client.post(gw.url(), json=call(99), headers=h)
            assert over.status_code == 503
            assert over.json()["error"]["message"] == "MCP server unavailable"
            assert not any(t.done() for t in waiting)  # held by Envoy, not forwarded
            assert sum(r["tool"] == "count_slowly" for r in demo.seen()) == 16
            # The processor's cluster is not full: the other server still serves.
            assert httpx.post(gw.url("other"), json=INIT, headers=ACCEPT, timeout=10).status_code == 200
        finally:
            for t in waiting:
                t.cancel()
            for s in streams:
                await s.__aexit__(None, None, None)
