"""`demo --keep`'s pieces that need no running stack: the live feed's lines, option checks, a taken port."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from extproc.cli import app
from extproc.demo.keep import AccessFeed, KeepOptions, client_snippets, feed_line, keep_demo

ACCESS = {
    "time": "2026-12-07T15:27:08.123Z",
    "level": "info",
    "logger": "mcp_extproc.access",
    "msg": "access",
    "user": "alice",
    "server": "github",
    "mcp_method": "tools/call",
    "tool": "delete_repository",
    "decision": "deny",
    "rule": "github-no-destructive",
    "status": 403,
    "duration_ms": 4.6,
}


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param(ACCESS, r"15:27:08 alice    github  tools/call delete_repository", id="denied-tool"),
        pytest.param(
            {
                **ACCESS,
                "user": "",
                "mcp_method": "",
                "tool": None,
                "decision": "",
                "rule": "",
                "status": 401,
                "detail": "MissingToken",
            },
            "15:27:08 -        github  MissingToken",
            id="401",
        ),
    ],
)
def test_feed_line_names_who_server_call_decision_status_and_time(doc: dict, expected: str) -> None:
    line = feed_line(json.dumps(doc).encode())
    assert line is not None and line.startswith(expected)
    assert line.endswith(f"{doc['status']} {round(doc['duration_ms'])} ms")


@pytest.mark.parametrize(
    "raw", [b"not json", b"[1]", json.dumps({**ACCESS, "logger": "envoy.access"}).encode(), b"2026 INFO text line"]
)
def test_feed_line_skips_everything_but_processor_access_lines(raw: bytes) -> None:
    assert feed_line(raw) is None


def test_feed_follows_the_log_across_partial_writes(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_bytes(json.dumps(ACCESS).encode() + b"\n")  # before the feed started: not shown
    feed = AccessFeed(log)
    line = json.dumps({**ACCESS, "tool": "list_issues", "decision": "allow"}).encode()
    with log.open("ab") as f:
        f.write(line[:20])
        f.flush()
        assert feed.new_lines() == []
        f.write(line[20:] + b"\n")
    assert [x.split()[3:6] for x in feed.new_lines()] == [["tools/call", "list_issues", "allow"]]


def test_snippets_are_a_url_and_a_bearer_header() -> None:
    inspector, desktop = client_snippets("http://127.0.0.1:8080/demo/mcp", "T0K")
    assert json.loads(desktop) == {
        "mcpServers": {
            "mcp-extproc-demo": {"url": "http://127.0.0.1:8080/demo/mcp", "headers": {"Authorization": "Bearer T0K"}}
        }
    }
    assert "Streamable HTTP" in inspector and '--header "Authorization: Bearer T0K"' in inspector


@pytest.mark.parametrize(
    "args", [["--port", "0"], ["--issuer-port", "0"], ["--keep", "--port", "70000"]], ids=["port", "issuer", "range"]
)
def test_port_options_are_checked(args: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), *args])
    assert result.exit_code == 2, result.output


def test_a_taken_port_is_named_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = io.StringIO()
        code = keep_demo(KeepOptions(tmp_path, port=port, issuer_port=0), Console(file=out, width=200))
    assert code == 1
    assert f"port {port} (the gateway) is in use" in out.getvalue() and "--port" in out.getvalue()
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing started
