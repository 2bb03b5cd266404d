"""JSON logs through real Envoy: every line of the processor's and Envoy's output parses as one JSON object,
each exchange has one access line joined to Envoy's by request_id, and no credential a session carried
(bearer token, cookie, query-string key, the client's session id) appears anywhere in the logs."""

from __future__ import annotations

import json
from typing import Any

import httpx
from gateway_parts import open_session

from extproc.demo.mcp_client import call_tool

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, ping, "notifications/*", tools/list]}
  - name: echo-only
    effect: allow
    subjects: {users: [alice]}
    targets: {servers: [demo], tools: [echo]}
"""

COOKIE = "sid=cookie-secret-5b1e"
QUERY_KEY = "query-secret-7c2d"


def _lines(text: str) -> list[dict[str, Any]]:
    docs = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:  # pragma: no cover - the failure message is the point
                raise AssertionError(f"log line {n} is not JSON: {line[:300]!r}") from e
            assert isinstance(doc, dict) and {"time", "level", "logger", "msg"} <= doc.keys(), line
            docs.append(doc)
    return docs


async def test_json_logs_parse_join_on_request_id_and_hold_no_secrets(start_mcp_server, start_authed, issuer) -> None:
    gw = start_authed([start_mcp_server("demo")], policy=POLICY, gateway={"log_format": "json"})
    token = issuer.mint("alice", aud=gw.endpoint)
    assert (await call_tool(gw.url(), "echo", {"text": "hello"}, token=token))["content"]
    headers = open_session(gw.url(), token)
    session_id = headers["mcp-session-id"]
    denied = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "add", "arguments": {"a": 1}}}
    r = httpx.post(f"{gw.url()}?api_key={QUERY_KEY}", json=denied, headers={**headers, "cookie": COOKIE}, timeout=10)
    assert r.status_code == 403
    assert httpx.post(gw.url(), json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10).status_code == 401
    gw.stop()  # flushes every process's output

    text = gw.log.read_text()
    for secret in (token, token.split(".")[2], COOKIE, "cookie-secret", QUERY_KEY, session_id):
        assert secret not in text, f"a credential reached the logs: {secret[:20]}…"

    docs = _lines(text)
    ours = [d for d in docs if d["logger"] == "mcp_extproc.access"]
    envoys = {d["request_id"]: d for d in docs if d["logger"] == "envoy.access"}
    assert ours and envoys
    for line in ours:  # one access line per exchange, each with Envoy's line for the same request
        assert line["request_id"] in envoys, line
        assert envoys[line["request_id"]]["status"] == line["status"]
    assert len({d["exchange"] for d in ours}) == len(ours)

    echo = next(d for d in ours if d["tool"] == "echo")
    assert echo["user"] == "alice" and echo["decision"] == "allow" and echo["rule"] == "echo-only"
    assert echo["mcp_method"] == "tools/call" and echo["status"] == 200 and echo["server"] == "demo"
    assert echo["bytes_in"] > 0 and echo["bytes_out"] > 0 and echo["duration_ms"] > 0
    deny = next(d for d in ours if d["tool"] == "add")
    assert deny["decision"] == "deny" and deny["rule"] == "default-deny" and deny["status"] == 403
    assert envoys[deny["request_id"]]["path"] == "/demo/mcp"  # the query string is never logged
    unauthenticated = next(d for d in ours if d["status"] == 401)
    assert unauthenticated["user"] == "" and unauthenticated["outcome"] == "denied"
    assert any(d["logger"].startswith("extproc.") for d in docs)  # the processor's own lines are JSON too
    # processor.event_loop's default: grpc.aio serves on uvloop (bench/README.md: less CPU per message)
    assert any(d["msg"].endswith("(event loop: uvloop)") for d in docs if d["logger"] == "extproc.server")
