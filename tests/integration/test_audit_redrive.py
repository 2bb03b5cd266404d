"""`sessions redrive`: a recorded session re-sent to the sample server; identical calls say so, changed ones diff."""

from __future__ import annotations

import json
import subprocess
import sys

from gateway_parts import recording_key

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect
from extproc.launcher import wait_until


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "extproc", *args], capture_output=True, text=True, timeout=120)


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
