"""MCP 2026-07-28 (stateless) beside the 2025 revisions, through real Envoy, with the official SDK on both ends."""

from __future__ import annotations

import httpx
import pytest
from gateway_parts import ACCEPT, SampleServer

from extproc.demo.mcp_client import connect, run_session


def _types(session) -> list[str]:
    return [e["type"] for e in session.events]


@pytest.mark.parametrize("mode", ["auto", "2026-07-28"])
async def test_default_client_speaks_2026_and_its_run_is_one_recording(
    sample_server: SampleServer, start_gateway, mode: str
) -> None:
    gw = start_gateway([sample_server])
    result = await run_session(gw.url(), mode=mode)
    assert result.protocol_version == "2026-07-28"
    assert result.tools == ["echo", "add", "count_slowly", "whoami"]
    assert result.echo["structuredContent"] == {"result": "hello"}
    gw.stop()

    session = gw.session(result.session_id)
    assert session.problems == []
    sent = [m["method"] for e in session.events if e["type"] == "mcp.request" for m in e["messages"]]
    seen = [r["method"] for r in sample_server.seen() if r["http_method"] == "POST"]
    assert sent == seen
    assert sent[-3:] == ["tools/list", "tools/call", "tools/call"]
    assert "initialize" not in sent
    starts = [e for e in session.events if e["type"] == "exchange.start"]
    assert len(starts) == len(sent)  # every exchange of the run in one recording
    print(sent)
