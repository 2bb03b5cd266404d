"""The sample MCP server and client driver talk to each other directly (no gateway), in SSE and JSON modes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from extproc.demo.mcp_client import run_session

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "test-token"


@dataclass(frozen=True)
class SampleServer:
    """A running sample server subprocess."""

    base_url: str
    json_response: bool

    @property
    def mcp_url(self) -> str:
        """The MCP endpoint."""
        return f"{self.base_url}/mcp"

    async def seen(self) -> dict:
        """What the server's /_seen endpoint reports."""
        async with httpx.AsyncClient(timeout=5) as http:
            return (await http.get(f"{self.base_url}/_seen")).json()


def _free_port() -> int:
    """A loopback port nobody is listening on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float = 15.0) -> None:
    """Poll url until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sample server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    pytest.fail(f"sample server not ready at {url} after {timeout}s:\n{log.read_text()}")


@pytest.fixture(params=[False, True], ids=["sse", "json"])
def sample_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SampleServer]:
    """Start `python -m extproc.demo.mcp_server` on a free port; always stop it."""
    json_response: bool = request.param
    port = _free_port()
    cmd = [sys.executable, "-m", "extproc.demo.mcp_server", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--name", "sample"] + (["--json-response"] if json_response else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        server = SampleServer(f"http://127.0.0.1:{port}", json_response)
        _wait_ready(proc, f"{server.base_url}/_seen", log)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_run_session(sample_server: SampleServer) -> None:
    result = await run_session(sample_server.mcp_url, token=TOKEN)

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

    seen = await sample_server.seen()
    assert seen["name"] == "sample"
    requests = seen["requests"]
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
