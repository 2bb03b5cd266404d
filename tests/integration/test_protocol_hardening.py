"""Request bodies and headers a parser, a policy or a server could read differently, through real Envoy."""

from __future__ import annotations

import json

import httpx
import pytest
from gateway_parts import ACCEPT

from extproc.demo.mcp_client import connect

V = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": V,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "raw", "version": "1"},
}
POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [server/discover, initialize, "notifications/*", tools/list]}
  - name: slow-counting
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [count_slowly]}
    arguments: {n: {min: 1, max: 3}, delay: {min: 0, max: 1}}
  - name: echo
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
  - name: no-secrets
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
    arguments: {text: {pattern: ".*secret.*", optional: true}}
"""


def _headers(token: str, name: str = "count_slowly", **extra: str) -> dict[str, str]:
    return {
        **ACCEPT,
        "content-type": "application/json",
        "authorization": f"Bearer {token}",
        "mcp-protocol-version": V,
        "mcp-method": "tools/call",
        "mcp-name": name,
        **extra,
    }


def _call(args: str, msg_id: int = 7, name: str = "count_slowly") -> bytes:
    """A tools/call body with ``args`` spliced in as written (json.dumps would never write NaN)."""
    params = {"name": name, "arguments": {"@": 0}, "_meta": META}
    body = {"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}
    return json.dumps(body).replace('{"@": 0}', args).encode()


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "[NaN]"])
async def test_non_finite_numbers_are_refused_and_never_reach_the_server(
    start_mcp_server, start_authed, issuer, number: str
) -> None:
    server = start_mcp_server("demo", json_response=True)
    gw = start_authed([server], policy=POLICY)
    token = issuer.mint("alice", aud=gw.endpoint)

    r = httpx.post(gw.url(), content=_call(f'{{"n": 1, "delay": {number}}}'), headers=_headers(token), timeout=10)

    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == -32700 and "is not a JSON number" in r.json()["error"]["message"]
    assert server.seen() == []
    ok = httpx.post(gw.url(), content=_call('{"n": 1, "delay": 0}'), headers=_headers(token), timeout=10)
    assert ok.status_code == 200 and ok.json()["result"]["isError"] is False, ok.text  # the range itself works
    assert [s["tool"] for s in server.seen()] == ["count_slowly"]


@pytest.mark.parametrize("version", [V, None])
@pytest.mark.parametrize(
    "params",
    [
        pytest.param("[1]", id="list"),
        pytest.param('"x"', id="string"),
        pytest.param("null", id="null"),
        pytest.param(json.dumps({"name": "echo", "arguments": ["x"], "_meta": META}), id="arguments-a-list"),
    ],
)
async def test_odd_params_with_a_param_header_are_a_client_error(
    start_mcp_server, start_authed, issuer, params: str, version: str | None
) -> None:
    server = start_mcp_server("demo", json_response=True)
    gw = start_authed([server], policy=POLICY)
    token = issuer.mint("alice", aud=gw.endpoint)
    body = b'{"jsonrpc":"2.0","id":11,"method":"tools/call","params":%s}' % params.encode()
    headers = _headers(token, **{"mcp-param-x": "1"})
    del headers["mcp-name"]  # nothing to name: params holds no name
    if version is None:
        del headers["mcp-protocol-version"]
    else:
        headers["mcp-protocol-version"] = version

    r = httpx.post(gw.url(), content=body, headers=headers, timeout=10)

    assert r.status_code == 400, r.text
    assert r.json()["id"] == 11 and r.json()["error"]["code"] in (-32020, -32602)
    assert server.seen() == []


MRTR_POLICY = (
    POLICY
    + """
  - name: approve
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [approve]}
  - name: never-pending
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [approve]}
    arguments: {action: {pattern: "pending:.*"}}
"""
)


def _messages(r: httpx.Response) -> list[dict]:
    """The JSON-RPC messages of a JSON or SSE response."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        return [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:") and line[5:].strip()]
    return [r.json()]


@pytest.mark.parametrize(
    "key",
    [pytest.param("request\\u0053tate", id="escaped-key"), pytest.param("requestState", id="plain-key")],
)
async def test_request_state_is_opened_only_at_params_request_state(
    start_mcp_server, start_authed, issuer, key: str
) -> None:
    """The sealed state, spelled plainly elsewhere in the request (the sample server binds its state to the
    arguments, so here: in the elicitation answer) and escaped at params.requestState: the state must be opened
    only at params.requestState, and the rest reach the server as the policy and the recording saw it."""
    server = start_mcp_server("demo", mrtr=True)
    gw = start_authed([server], policy=MRTR_POLICY)
    token = issuer.mint("alice", aud=gw.endpoint)
    first = httpx.post(gw.url(), content=_call('{"action": "x"}', 1, "approve"), headers=_headers(token, "approve"))
    [asked] = [m for m in _messages(first) if m.get("id") == 1]
    sealed = asked["result"]["requestState"]
    assert sealed.startswith("mxs1.")

    escaped = "".join(f"\\u{ord(c):04x}" for c in sealed)  # the same string, spelled differently
    answers = {"approval": {"action": "accept", "content": {"ok": True, "note": sealed}}}
    body = _call('{"action": "x"}', 2, "approve").replace(
        b'"_meta"', f'"{key}": "{escaped}", "inputResponses": {json.dumps(answers)}, "_meta"'.encode()
    )
    r = httpx.post(gw.url(), content=body, headers=_headers(token, "approve"), timeout=10)

    assert r.status_code == 200, r.text
    [done] = [m for m in _messages(r) if m.get("id") == 2]
    assert done["result"]["structuredContent"] == {"result": "x: approved (state pending:x)"}
    gw.stop()
    recorded = [
        m["params"]
        for p in gw.store.root.rglob("*.jsonl")
        for line in p.read_bytes().splitlines()
        if (e := json.loads(line))["type"] == "mcp.request"
        for m in e["messages"]
        if m.get("id") == 2
    ]
    assert [p["inputResponses"] for p in recorded] == [answers]


async def test_a_folded_spelling_of_request_state_is_refused(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo", mrtr=True)
    gw = start_authed([server], policy=MRTR_POLICY)
    token = issuer.mint("alice", aud=gw.endpoint)
    body = _call('{"action": "x"}', 3, "approve").replace(b'"_meta"', b'"RequestState": "mxs1.x", "_meta"')
    r = httpx.post(gw.url(), content=body, headers=_headers(token, "approve"), timeout=10)
    assert r.status_code == 400 and r.json()["id"] == 3 and "ambiguous" in r.json()["error"]["message"], r.text
    assert server.seen() == []


@pytest.mark.parametrize("msg_id", [2, "req-2"])
async def test_a_session_of_another_identity_is_refused_with_the_request_id(
    start_mcp_server, start_authed, issuer, msg_id: int | str
) -> None:
    server = start_mcp_server("demo", json_response=True)
    gw = start_authed([server], policy=POLICY)
    alice, bob = issuer.mint("alice", aud=gw.endpoint), issuer.mint("bob", aud=gw.endpoint)
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    r = httpx.post(gw.url(), json=init, headers={**ACCEPT, "authorization": f"Bearer {alice}"}, timeout=10)
    session = r.headers["mcp-session-id"]
    before = len(server.seen())
    headers = {**ACCEPT, "mcp-session-id": session, "mcp-protocol-version": "2025-11-25"}
    ping = {"jsonrpc": "2.0", "id": msg_id, "method": "ping"}

    stolen = httpx.post(gw.url(), json=ping, headers={**headers, "authorization": f"Bearer {bob}"}, timeout=10)

    assert stolen.status_code == 403, stolen.text
    assert stolen.json()["id"] == msg_id
    assert stolen.json()["error"]["message"] == "session belongs to another identity"
    listen = httpx.get(gw.url(), headers={**headers, "authorization": f"Bearer {bob}"}, timeout=10)
    assert listen.status_code == 403 and listen.json()["id"] is None  # a GET has no request to name
    assert len(server.seen()) == before  # neither reached the server
    gw.stop()
    events = [json.loads(x) for p in gw.store.root.rglob("*.jsonl") for x in p.read_bytes().splitlines()]
    denials = [e for e in events if e["type"] == "exchange.end" and e["outcome"] == "denied"]
    assert len(denials) == 2 and all("SessionNotYours" in d["detail"] for d in denials)


HEADER_POLICY = (
    POLICY
    + """
  - name: regional
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [regional_echo]}
"""
)


async def test_param_headers_are_checked_against_the_listed_x_mcp_header_map(
    start_mcp_server, start_authed, issuer
) -> None:
    server = start_mcp_server("demo", True, "--param-headers")
    gw = start_authed([server], policy=HEADER_POLICY)
    token = issuer.mint("alice", aud=gw.endpoint)
    args = '{"region": "eu", "text": "hi"}'

    def call(**headers: str) -> httpx.Response:
        h = _headers(token, "regional_echo", **headers)
        return httpx.post(gw.url(), content=_call(args, 5, "regional_echo"), headers=h, timeout=10)

    # The official client lists the tools, then mirrors region into Mcp-Param-Region: the gateway lets it through.
    async with connect(gw.url(), token=token) as conn:
        assert conn.client.protocol_version == V
        result = await conn.client.call_tool("regional_echo", {"region": "eu", "text": "hi"})
        assert result.structured_content == {"result": "eu: hi"}
    assert any(s["headers"].get("mcp-param-region") == "eu" for s in server.seen())
    seen = len(server.seen())

    undeclared = call(**{"mcp-param-region": "eu", "mcp-param-zone": "eu"})  # its value is an argument: not enough
    missing = call()
    other = call(**{"mcp-param-region": "us"})
    for r, why in ((undeclared, "not declared"), (missing, "missing"), (other, "does not match")):
        assert r.status_code == 400, r.text
        assert r.json()["id"] == 5 and r.json()["error"]["code"] == -32020 and why in r.json()["error"]["message"]
    assert len(server.seen()) == seen  # none reached the server
    assert call(**{"mcp-param-region": "eu"}).status_code == 200
