"""A stdio MCP server behind the gateway (``servers[].stdio``): the launcher runs it behind a kept bridge
(supergateway from npm, mcp-proxy from PyPI: `make stdio-bridge` installs both), and from there on it is a server
like any other: the official SDK client through Envoy, the policy deciding, the recording keeping what happened.
A bridge that dies is started again by the launcher's supervisor."""

from __future__ import annotations

import os
import signal
import sys

import pytest
from gateway_parts import Gateway, recording_key

from extproc.demo.mcp_client import connect
from extproc.launcher import can_connect, free_port, wait_until

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: files-but-not-add
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [files], methods: ["*"]}
  - name: no-add
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [files], methods: [tools/call], tools: [add]}
"""


def _start(start_authed, bridge: str) -> tuple[Gateway, int]:  # type: ignore[no-untyped-def]
    port = free_port()
    command = [sys.executable, "-m", "extproc.demo.mcp_server", "--stdio", "--name", "files"]
    entry = {"name": "files", "stdio": {"command": command, "port": port, "bridge": bridge}}
    return start_authed([], policy=POLICY, gateway={"server_entries": [entry]}), port


@pytest.mark.parametrize("bridge", ["supergateway", "mcp-proxy"])
async def test_a_stdio_server_behind_envoy_policy_and_recording(start_authed, issuer, bridge: str) -> None:  # type: ignore[no-untyped-def]
    gw, port = _start(start_authed, bridge)
    token = issuer.mint("alice", aud=gw.endpoint)

    async with connect(gw.url("files"), token=token, mode="legacy") as conn:
        tools = {t.name for t in (await conn.client.list_tools()).tools}
        assert "echo" in tools and "add" not in tools  # the list as the policy allows it
        assert (await conn.client.call_tool("echo", {"text": "over stdio"})).structured_content == {
            "result": "over stdio"
        }
        with pytest.raises(Exception, match="denied"):  # the policy decides before the bridge sees the call
            await conn.client.call_tool("add", {"a": 1, "b": 2})
        first = recording_key(conn.session_id, "files")

    # The bridge dies: the launcher's supervisor starts it again, and the server answers anew.
    bridge_proc = gw.stack.bridges["files"]
    os.killpg(bridge_proc.pid, signal.SIGKILL)
    bridge_proc.wait()
    wait_until(lambda: gw.stack.supervise() is None and gw.stack.bridges["files"] is not bridge_proc, 10, "restart")
    wait_until(lambda: can_connect(f"127.0.0.1:{port}"), 30, "the restarted bridge")
    async with connect(gw.url("files"), token=token, mode="legacy") as conn:
        assert (await conn.client.call_tool("echo", {"text": "again"})).structured_content == {"result": "again"}
        second = recording_key(conn.session_id, "files")

    gw.stop()
    sessions = [gw.session(first), gw.session(second)]
    assert all(s.problems == [] for s in sessions)  # both sessions verify
    calls = [
        e for s in sessions for e in s.events if e["type"] == "policy.decision" and e["call"].startswith("tools/call")
    ]
    assert [(c["call"].split("'")[1], c["rule"], c["allowed"]) for c in calls] == [
        ("echo", "files-but-not-add", True),
        ("add", "no-add", False),
        ("echo", "files-but-not-add", True),
    ]
