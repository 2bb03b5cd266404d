"""The sample MCP server and client driver talk to each other directly (no gateway), in SSE and JSON modes."""

from __future__ import annotations

from gateway_parts import SampleServer

from extproc.demo.mcp_client import run_session

TOKEN = "test-token"


async def test_run_session(sample_server: SampleServer) -> None:
    result = await run_session(sample_server.mcp_url, token=TOKEN, mode="legacy")

    assert result.session_id
    assert result.tools == ["echo", "add", "count_slowly", "whoami"]
    assert result.echo["content"] == [{"type": "text", "text": "hello"}]
    assert result.echo["structuredContent"] == {"result": "hello"}
    assert result.count["content"] == [{"type": "text", "text": "counted to 3"}]
    if sample_server.json_response:
        # A JSON response body carries only the result: the SDK server drops request-related notifications.
        assert result.progress == []
    else:
        assert [p["progress"] for p in result.progress] == [1, 2, 3]
        assert all(p["total"] == 3 for p in result.progress)

    requests = sample_server.seen()
    posts = [(r["method"], r["tool"]) for r in requests if r["http_method"] == "POST"]
    assert posts == [
        ("initialize", None),
        ("notifications/initialized", None),
        ("tools/list", None),
        ("tools/call", "echo"),
        ("tools/call", "count_slowly"),
    ]
    # The client closes the session with DELETE after its last POST (the standalone GET stream may sit anywhere).
    last_post = max(i for i, r in enumerate(requests) if r["http_method"] == "POST")
    assert [r["http_method"] for r in requests[last_post + 1 :] if r["http_method"] != "GET"] == ["DELETE"]
    assert all(r["headers"]["authorization"] == f"Bearer {TOKEN}" for r in requests)
    assert "mcp-session-id" not in requests[0]["headers"]
    assert all(r["headers"]["mcp-session-id"] == result.session_id for r in requests[1:])
