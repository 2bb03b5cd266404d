"""The running parts integration tests hold: a sample MCP server process and a gateway (processor + Envoy).

A module of its own (not conftest) so test files can import these types unambiguously.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import zygote

from extproc.launcher import Stack
from extproc.recording.replay import Session, load_session
from extproc.recording.store import safe_key
from extproc.recording.store.file import FileStore


@dataclass
class SampleServer:
    """A running sample MCP server subprocess."""

    name: str
    port: int
    json_response: bool
    proc: subprocess.Popen | Any  # a zygote.ZygoteProcess (forked) has the same poll/wait/terminate/kill

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}/mcp"

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.port}"

    def seen(self) -> list[dict[str, Any]]:
        """Every HTTP request that reached the server's /mcp, in order."""
        return httpx.get(f"{self.base_url}/_seen", timeout=5).json()["requests"]


class ForkedStack(Stack):
    """A Stack whose Python parts (processor workers, the audit service) are forked from the tests' zygote
    (tests/support/zygote.py) instead of started cold: the same command line, environment, log and process group,
    about 1.5 s of CPU less per part. Envoy and stdio bridges start as Stack starts them."""

    def _popen(self, cmd: list[str], env: dict[str, str] | None = None) -> Any:
        if cmd[:2] != [sys.executable, "-m"] or zygote._cold():
            return super()._popen(cmd, env)
        return zygote.zygote().spawn(cmd[2], cmd[3:], self._log, env=env, process_group=True)


@dataclass
class Gateway:
    """A running gateway and the config it was started with."""

    stack: Stack
    config: dict[str, Any]
    log: Path

    def url(self, server: str = "demo") -> str:
        return self.stack.url(server)

    @property
    def endpoint(self) -> str:
        return self.stack.endpoint

    @property
    def store(self) -> FileStore:
        return FileStore(self.config["recording"]["directory"])

    def session(self, session_id: str) -> Session:
        """A recorded session, read back as `sessions show` reads it (a server's id: its u_<server>_... unit)."""
        return load_session(self.store, unit_key(self.store, session_id))

    def stop(self) -> None:
        self.stack.stop()


def recording_key(client_session: str | None, server: str = "demo", backend: str = "") -> str:
    """The recording a client's session id names: a 2025 session's bound id carries the server's id, recorded
    under its server's and backend's unit; a stateless client holds its recorded run (the ``mcp-extproc-recording``
    header) as it is."""
    from extproc.authn.session_binding import server_id_of
    from extproc.reserved import server_unit

    server_id = server_id_of(client_session or "")
    return safe_key(server_unit(server, backend, server_id) if server_id else client_session or "")


def unit_key(store: Any, session_id: str) -> str:
    """The store key of the unit recording ``session_id``: itself (a run, an exchange, a legacy recording) or the
    one server unit (u_<server>_<backend>_<id>) whose server named it so."""
    from extproc.recording.units import unit_keys

    found = unit_keys(store, session_id)
    assert len(found) <= 1, f"{session_id!r} names units of several servers: {found}"
    return found[0] if found else safe_key(session_id)


ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


def open_session(url: str, token: str | None = None) -> dict[str, str]:
    """initialize + notifications/initialized over plain HTTP; returns the headers for the session's next requests."""
    base = {**ACCEPT, **({"authorization": f"Bearer {token}"} if token else {})}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    r = httpx.post(url, json=init, headers=base, timeout=10)
    assert r.status_code == 200, r.text
    headers = {**base, "mcp-session-id": r.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
    httpx.post(url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers, timeout=10)
    return headers


ALLOW_ALL = """
apiVersion: mcp-extproc/v1
rules:
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
"""
