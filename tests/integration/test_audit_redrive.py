"""`sessions redrive`: a recorded session re-sent to the sample server; identical calls say so, changed ones diff."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import httpx2
import zygote
from gateway_parts import open_session, recording_key
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import ElicitResult

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect
from extproc.launcher import wait_until


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return zygote.run_command([sys.executable, "-m", "extproc", *args], timeout=120)


async def test_redrive_reports_identical_calls_and_names_the_changed_tool(
    start_mcp_server, start_authed, issuer: DevIssuer
) -> None:
    server = start_mcp_server("alpha")
    gw = start_authed([server])
    # A 2025 session (initialize ... DELETE): the redrive opens a fresh one the same way.
    async with connect(gw.url("alpha"), issuer.mint("carol", aud=gw.endpoint), mode="legacy") as conn:
        await conn.client.list_tools()
        await conn.client.call_tool("echo", {"text": "hello"})
        await conn.client.call_tool("whoami", {})  # through the gateway it sees carol; directly, nobody
        key = recording_key(conn.session_id, "alpha")
    wait_until(lambda: key in gw.store.list_sessions(), 20, "the recording")
    config = str(gw.stack.config)
    before = len(server.seen())

    # Tool calls are skipped unless allowed; the rest is re-sent in a fresh session and compared.
    done = _cli("sessions", "redrive", key, "--to", server.mcp_url, "--config", config)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(ln.startswith("identical") and "initialize" in ln for ln in lines)
    assert any(ln.startswith("identical") and "tools/list" in ln for ln in lines)
    assert sum(ln.startswith("skipped") for ln in lines) == 2
    tools_called = [r["tool"] for r in server.seen()[before:] if r["tool"]]
    assert tools_called == []  # nothing with side effects ran

    # Allowed: echo answers the same; whoami's result changed and the diff names it.
    done = _cli("sessions", "redrive", key, "--to", server.mcp_url, "--config", config, "--allow-tools", "echo,whoami")
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout
    assert "identical tools/call echo" in out
    assert "differs   tools/call whoami" in out and '"carol"' in out

    # Both runs are on the audit trail.
    trail = [k for k in gw.store.list_sessions() if k.startswith("audit-")]
    assert trail
    events = [e for e in gw.session(trail[0]).events if e["type"] == "audit.access"]
    assert [e["action"] for e in events] == ["redrive", "redrive"]
    assert events[1]["query"] == {"to": server.mcp_url, "allow_tools": "echo,whoami"}
    assert json.dumps(events[0]["principal"]).count("local-cli") == 1


REFUSING = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, ping, "notifications/*", tools/list]}
  - name: echo-for-now
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], tools: [echo]}
"""


def test_redrive_sends_only_what_the_gateway_allowed_and_today_s_policy_allows(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path
) -> None:
    server = start_mcp_server("alpha")
    gw = start_authed([server], policy=REFUSING)
    headers = open_session(gw.url("alpha"), issuer.mint("mallory", aud=gw.endpoint))
    url = gw.url("alpha")

    def post(msg: dict, **extra: str) -> int:
        return httpx.post(url, json={"jsonrpc": "2.0", **msg}, headers={**headers, **extra}, timeout=10).status_code

    # Planted in her own recording: requests the gateway refuses, for a later forensic re-drive to run.
    assert post({"id": 2, "method": "tools/list"}, **{"mcp-x-planted": "yes"}) == 200
    assert post({"id": 3, "method": "resources/read", "params": {"uri": "demo://server-name"}}) == 403
    assert post({"id": 4, "method": "prompts/get", "params": {"name": "greet", "arguments": {"who": "x"}}}) == 403
    assert post({"id": 5, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}) == 200
    httpx.delete(url, headers=headers, timeout=10)
    key = recording_key(headers["mcp-session-id"], "alpha")
    wait_until(lambda: key in gw.store.list_sessions(), 20, "the recording")

    # Today's policy no longer allows echo for anyone.
    policy_file = next(Path(gw.config["policy"]["directory"]).glob("*.yaml"))
    policy_file.write_text(REFUSING.split("  - name: echo-for-now")[0])
    before = len(server.seen())
    config = str(gw.stack.config)
    done = _cli("sessions", "redrive", key, "--to", server.mcp_url, "--config", config, "--allow-tools", "echo")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout

    seen = server.seen()[before:]
    assert [r["method"] for r in seen if r["method"]] == ["initialize", "notifications/initialized", "tools/list"]
    assert not any(k.startswith("mcp-x") for r in seen for k in r["headers"])  # no recorded client header
    assert "identical tools/list" in out
    lines = out.splitlines()
    for refused in ("resources/read", "prompts/get"):
        at = next(n for n, ln in enumerate(lines) if ln.startswith(f"skipped   {refused}"))
        assert "refused when recorded" in lines[at + 1], out
    assert "skipped   tools/call echo" in out and "denied by today's policy" in out, out


def test_redrive_without_a_policy_sends_nothing(start_mcp_server, start_authed, issuer: DevIssuer) -> None:
    server = start_mcp_server("alpha")
    gw = start_authed([server])
    headers = open_session(gw.url("alpha"), issuer.mint("carol", aud=gw.endpoint))
    httpx.delete(gw.url("alpha"), headers=headers, timeout=10)
    key = recording_key(headers["mcp-session-id"], "alpha")
    wait_until(lambda: key in gw.store.list_sessions(), 20, "the recording")
    before = len(server.seen())
    done = _cli("sessions", "redrive", key, "--to", server.mcp_url, "--dir", gw.config["recording"]["directory"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no policy to decide it by today" in done.stdout
    assert server.seen()[before:] == []


async def test_redrive_of_a_stateless_run_strips_the_sealed_request_state(
    start_mcp_server, start_authed, issuer: DevIssuer
) -> None:
    server = start_mcp_server("demo", mrtr=True)
    gw = start_authed([server])
    runs: list[str] = []

    async def tap(response: httpx2.Response) -> None:
        runs.append(response.headers.get("mcp-extproc-recording", ""))

    async def accept(ctx, params):  # type: ignore[no-untyped-def]
        return ElicitResult(action="accept", content={"ok": True})

    token = issuer.mint("alice", aud=gw.endpoint)
    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {token}"}, event_hooks={"response": [tap]}) as h:
        async with Client(streamable_http_client(gw.url("demo"), http_client=h), elicitation_callback=accept) as c:
            result = await c.call_tool("approve", {"action": "deploy"})
    assert result.structured_content == {"result": "deploy: approved (state pending:deploy)"}
    [key] = {r for r in runs if r}
    wait_until(lambda: key in gw.store.list_sessions(), 20, "the recording")
    gw.stack.stop()  # the run's stream sealed

    done = _cli("sessions", "redrive", key, "--to", server.mcp_url, "--config", str(gw.stack.config),
                "--allow-tools", "approve")  # fmt: skip
    out = done.stdout
    # The retry round went out without the state the gateway sealed for alice: the server saw none.
    assert "(state None)" in out and "mxs1." not in out, out
    seen = [r for r in server.seen() if r["tool"] == "approve"]
    assert len(seen) == 4  # two rounds recorded, two re-driven
    assert all(r["headers"].get("mcp-name") == "approve" for r in seen[2:])  # derived from the body
