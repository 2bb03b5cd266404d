"""Bypasses found in review, each tried through real Envoy: what the policy decided on must be what happened."""

from __future__ import annotations

import json

import httpx
from gateway_parts import Gateway, open_session

from extproc.authn.dev_issuer import DevIssuer
from extproc.mcp.sse import SseParser

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, ping, "notifications/*", tools/list, resources/list]}
  - name: guest-whoami
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [whoami]}
  - name: echo-short
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
    arguments: {text: {max_length: 8, optional: true}}
  - name: no-secrets-echoed
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
    arguments: {text: {pattern: ".*secret.*", optional: true}}
recording:
  - servers: [demo]
    defaults: true
"""


def _events(gw: Gateway) -> list[dict]:
    return [json.loads(x) for p in gw.store.root.rglob("*.jsonl") for x in p.read_bytes().splitlines()]


def test_sse_list_with_bare_cr_line_ends_is_filtered(start_mcp_server, start_authed, issuer: DevIssuer) -> None:
    server = start_mcp_server("demo", False, "--bare-cr")
    gw = start_authed([server], policy=POLICY)
    headers = open_session(gw.url(), token=issuer.mint("guest", aud=gw.endpoint))

    r = httpx.post(gw.url(), json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=headers, timeout=10)

    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    for hidden in (b"count_slowly", b'"add"'):
        assert hidden not in r.content
    parser = SseParser()
    events = parser.feed(r.content)
    assert parser.finish() == ([], b"")  # the client gets whole events only
    (listed,) = [json.loads(e.data) for e in events if e.data]
    assert sorted(t["name"] for t in listed["result"]["tools"]) == ["echo", "whoami"]
    gw.stop()
    filtered = [e for e in _events(gw) if e["type"] == "policy.list_filtered"]
    assert [sorted(e["hidden"]) for e in filtered] == [["add", "count_slowly"]]


def test_batch_repeating_a_request_id_never_reaches_the_server(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo")
    gw = start_authed([server], policy=POLICY)
    headers = open_session(gw.url(), token=issuer.mint("guest", aud=gw.endpoint))
    before = len(server.seen())
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 1, "method": "resources/list"},
    ]

    r = httpx.post(gw.url(), json=batch, headers=headers, timeout=10)

    assert len(server.seen()) == before
    assert r.status_code == 400
    assert "repeats request id 1" in r.text


def test_folded_argument_names_cannot_skip_argument_conditions(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo")
    gw = start_authed([server], policy=POLICY)
    headers = open_session(gw.url(), token=issuer.mint("guest", aud=gw.endpoint))

    def call(arguments: dict) -> httpx.Response:
        msg = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": arguments}}
        return httpx.post(gw.url(), json=msg, headers=headers, timeout=10)

    folded = [call({"Text": "my secret"}), call({"TEXT": "far too long for the rule"})]
    ok = call({"text": "hi"})

    assert [r["tool"] for r in server.seen() if r["method"] == "tools/call"] == ["echo"]  # only the plain one
    assert [r.status_code for r in folded] == [400, 400] and ok.status_code == 200
    assert "different spelling of 'text'" in folded[0].json()["error"]["message"]
    gw.stop()
    decisions = [e for e in _events(gw) if e["type"] == "policy.decision" and not e["allowed"]]
    assert len(decisions) == 2 and all("different spelling" in e["reason"] for e in decisions)


def test_the_same_sub_from_a_second_issuer_is_someone_else(start_mcp_server, start_gateway, issuer, tmp_path) -> None:
    from extproc.launcher import free_port

    server = start_mcp_server("demo")
    with DevIssuer(tmp_path / "second-issuer") as second:
        policies = tmp_path / "two-issuer-policies"
        policies.mkdir()
        (policies / "p.yaml").write_text(
            POLICY.replace(
                'subjects: {users: ["*"]}\n    targets: {servers: [demo], tools: [whoami]}',
                f'subjects: {{users: ["{issuer.url}#alice"]}}\n    targets: {{servers: [demo], tools: [whoami]}}',
            ).replace(  # a rule written as if there were one issuer: with two, plain "alice" is nobody
                "recording:",
                "  - name: plain-alice\n    effect: allow\n    subjects: {users: [alice]}\n"
                "    targets: {servers: [demo], tools: [whoami]}\nrecording:",
            )
        )
        port = free_port()
        auth = {
            "public_url": f"http://127.0.0.1:{port}",
            "issuers": [{"issuer": issuer.url}, {"issuer": second.url}],
            "forward_identity_headers": True,
        }
        gw = start_gateway(
            [server], listen={"port": port}, auth=auth, policy={"directory": str(policies), "reload_interval_ms": 200}
        )
        whoami = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}

        def call(dev: DevIssuer) -> httpx.Response:
            headers = open_session(gw.url(), token=dev.mint("alice", aud=gw.endpoint, groups=["eng"]))
            return httpx.post(gw.url(), json=whoami, headers=headers, timeout=10)

        impostor, alice = call(second), call(issuer)

    assert impostor.status_code == 403
    assert alice.status_code == 200, alice.text
    (event,) = [e for e in SseParser().feed(alice.content) if e.data]
    assert json.loads(event.data)["result"]["structuredContent"] == {
        "user": f"{issuer.url}#alice",
        "groups": f"{issuer.url}#eng",
    }
    calls = [r for r in server.seen() if r["tool"] == "whoami"]
    assert [r["headers"]["x-mcp-user"] for r in calls] == [f"{issuer.url}#alice"]


def test_credentials_in_header_values_and_the_query_are_never_stored(start_mcp_server, start_authed, issuer) -> None:
    ghp = "ghp_" + "Qx7r" * 10
    gw = start_authed([start_mcp_server("demo")], policy=POLICY)
    jwt = issuer.mint("guest", aud=gw.endpoint)  # any JWT: here the caller's own token, sent a second time
    url = f"{gw.url()}?pat={ghp}&jwt={jwt}&page=2"
    headers = open_session(url, token=jwt)
    extra = {"x-github-pat": ghp, "x-access": "AKIAIOSFODNN7EXAMPLE", "x-pass": "hunter2-x", "x-note": f"tok {ghp}"}
    r = httpx.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ping"}, headers={**headers, **extra}, timeout=10)
    assert r.status_code == 200
    gw.stop()

    stored = b"".join(p.read_bytes() for p in gw.store.root.rglob("*.jsonl"))
    for secret in (ghp, jwt, "AKIAIOSFODNN7EXAMPLE", "hunter2-x"):
        assert secret.encode() not in stored, secret
    start = [e for e in _events(gw) if e["type"] == "exchange.start"][-1]
    assert start["path"].endswith("&page=2") and "[REDACTED:builtin-password-field]" in start["path"]
    assert {"x-github-pat", "x-pass"} <= set(start["credentials_removed"])
    assert start["headers"]["x-access"] == "[REDACTED:builtin-aws-access-key]"
    assert {(x["rule"], x["pointer"]) for x in start["redactions"]} >= {
        ("builtin-password-field", "/query/pat"),
        ("builtin-password-field", "/query/jwt"),
        ("builtin-aws-access-key", "/headers/x-access"),
        ("builtin-github-token", "/headers/x-note"),
    }
