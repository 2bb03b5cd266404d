"""MCP client driver (official SDK, Streamable HTTP) used by the demo and the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import MCP_SESSION_ID, streamable_http_client
from mcp.types import CallToolResult


@dataclass
class SessionResult:
    """What one scripted session saw: session id, listed tools, tool results and progress notifications."""

    session_id: str | None
    protocol_version: str
    tools: list[str]
    echo: dict[str, Any]
    count: dict[str, Any]
    progress: list[dict[str, Any]] = field(default_factory=list)


# The gateway names the recorded run of a stateless (2026-07-28) request in this response header.
RECORDING_HEADER = "mcp-extproc-recording"


class _SessionIdTap:
    """httpx2 response hook keeping the first Mcp-Session-Id the server sends (the initialize response's), or for
    stateless traffic the recorded run the gateway names."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.runs: list[str] = []

    async def __call__(self, response: httpx2.Response) -> None:
        """Remember the session id if this is the first response carrying one."""
        if (run := response.headers.get(RECORDING_HEADER)) is not None and run not in self.runs:
            self.runs.append(run)
        if self.session_id is None:
            self.session_id = response.headers.get(MCP_SESSION_ID) or run


@dataclass
class Connection:
    """An initialized SDK client and the Mcp-Session-Id the server assigned to it."""

    client: Client
    _tap: _SessionIdTap

    @property
    def session_id(self) -> str | None:
        """The session id (2025) or the gateway's recorded run (2026-07-28); None if neither was named."""
        return self._tap.session_id

    @property
    def runs(self) -> list[str]:
        """Every recorded run the gateway named for this connection's stateless requests, in order."""
        return self._tap.runs


@asynccontextmanager
async def connect(
    url: str, token: str | None = None, mode: str = "auto", headers: dict[str, str] | None = None
) -> AsyncIterator[Connection]:
    """Connect over Streamable HTTP in ``mode``: the SDK's default "auto" (server/discover, 2026-07-28 when the
    server speaks it, else the handshake), "legacy" (the 2025 handshake; DELETE on exit) or a pinned revision."""
    # The SDK keeps the session id inside its transport and does not expose it, so read it off the wire.
    tap = _SessionIdTap()
    headers = {**(headers or {}), **({"authorization": f"Bearer {token}"} if token else {})}
    # Same timeouts as the SDK's own default client: a response stream may stay open a long time.
    timeout = httpx2.Timeout(30.0, read=300.0)
    async with httpx2.AsyncClient(headers=headers, timeout=timeout, event_hooks={"response": [tap]}) as http:
        # cache=None: every call must reach the wire, the gateway is what we test.
        async with Client(streamable_http_client(url, http_client=http), mode=mode, cache=None) as client:
            yield Connection(client, tap)


def _plain(result: CallToolResult) -> dict[str, Any]:
    """A tool result as its JSON wire shape (content, structuredContent, isError)."""
    return result.model_dump(mode="json", by_alias=True, exclude_unset=True)


async def run_session(url: str, token: str | None = None, progress: bool = True, mode: str = "auto") -> SessionResult:
    """Connect, list tools, call echo and count_slowly (collecting progress), then close the session."""
    notes: list[dict[str, Any]] = []

    # Parameter names must match the SDK's ProgressFnT protocol.
    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append({"progress": progress, "total": total, "message": message})

    async with connect(url, token, mode) as conn:
        listed = await conn.client.list_tools()
        echo = await conn.client.call_tool("echo", {"text": "hello"})
        count = await conn.client.call_tool(
            "count_slowly", {"n": 3, "delay": 0.05}, progress_callback=on_progress if progress else None
        )
        return SessionResult(
            session_id=conn.session_id,
            protocol_version=conn.client.protocol_version,
            tools=[tool.name for tool in listed.tools],
            echo=_plain(echo),
            count=_plain(count),
            progress=notes,
        )


async def call_tool(
    url: str, name: str, args: dict[str, Any], token: str | None = None, mode: str = "auto"
) -> dict[str, Any]:
    """Call one tool in a fresh session and return the result's wire shape."""
    async with connect(url, token, mode) as conn:
        return _plain(await conn.client.call_tool(name, args))


async def list_tools(url: str, token: str | None = None, mode: str = "auto") -> list[str]:
    """List tool names in a fresh session."""
    async with connect(url, token, mode) as conn:
        return [tool.name for tool in (await conn.client.list_tools()).tools]


def main(argv: list[str] | None = None) -> int:
    """`python -m extproc.demo.mcp_client URL [--token T]`: one scripted session, its result as JSON."""
    import argparse
    import asyncio
    import dataclasses
    import json
    import os

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("url", help="the gateway's MCP URL, e.g. http://localhost:8080/demo/mcp")
    parser.add_argument("--token", default=os.environ.get("MCP_TOKEN"), help="bearer token (default: $MCP_TOKEN)")
    args = parser.parse_args(argv)
    result = asyncio.run(run_session(args.url, args.token))
    print(json.dumps(dataclasses.asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
