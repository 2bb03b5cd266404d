"""Capture levels: compiled per server and tool (strictest wins), and what shape and metadata keep of a message."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from typing import Any

import pytest

from extproc.errors import ConfigError
from extproc.policy import CompiledPolicy
from extproc.policy.capture import Capture

POLICY = """
apiVersion: mcp-extproc/v1
recording:
  - servers: [github]
    capture: full
  - servers: [jira]
    capture: shape
  - servers: [jira]
    capture: redacted
  - servers: [github]
    tools: [delete_*]
    capture: metadata
"""
SALT = b"s" * 32
CALL = {
    "jsonrpc": "2.0",
    "id": 7,
    "method": "tools/call",
    "params": {
        "name": "create_issue",
        "arguments": {"title": "secret plan", "n": 3, "ok": True, "tags": ["a"], "x": None},
    },
}
RESULT = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "done: 42"}], "isError": False}}
ERROR = {"jsonrpc": "2.0", "id": 8, "error": {"code": -32000, "message": "no repo secret-repo"}}


def _h(value: Any) -> str:
    return hmac.new(SALT, json.dumps(value).encode(), hashlib.sha256).hexdigest()[:32]


@pytest.fixture
def policy(compile_yaml: Callable[..., CompiledPolicy]) -> CompiledPolicy:
    return compile_yaml(POLICY)


@pytest.mark.parametrize(
    ("server", "tools", "level"),
    [
        ("github", (), "full"),
        ("github", ("create_issue",), "full"),
        ("github", ("create_issue", "delete_repo"), "metadata"),  # a batch: the strictest of its tools
        ("jira", (), "shape"),  # two entries: the strictest wins, whatever their order
        ("demo", (), "redacted"),  # no entry: the default
    ],
)
def test_level_per_server_and_tool(policy: CompiledPolicy, server: str, tools: tuple[str, ...], level: str) -> None:
    assert policy.capture(server, tools) == level


def test_headers_of_a_server_with_a_per_tool_level_take_the_strictest(policy: CompiledPolicy) -> None:
    # Headers are recorded before the body names the tool, and Mcp-Param-* headers carry its arguments.
    assert policy.header_capture("github") == "metadata"
    assert policy.header_capture("jira") == "shape"


def test_an_entry_for_every_server_bounds_each_server(compile_yaml: Callable[..., CompiledPolicy]) -> None:
    policy = compile_yaml(POLICY + '  - servers: ["*"]\n    capture: shape\n')
    assert policy.capture("github") == "shape" and policy.capture("demo") == "shape"


def test_a_per_tool_entry_sets_capture_only(compile_yaml: Callable[..., CompiledPolicy]) -> None:
    bad = "apiVersion: mcp-extproc/v1\nrecording:\n  - servers: [demo]\n    tools: [x]\n    redact: []\n"
    with pytest.raises(ConfigError, match="per-tool entry sets capture only"):
        compile_yaml(bad)


def test_shape_keeps_names_types_sizes_and_salted_hashes() -> None:
    c = Capture("shape", SALT)
    [call, result, error] = c.messages([CALL, RESULT, ERROR])
    assert call["method"] == "tools/call" and call["id"] == 7 and call["params"]["name"] == "create_issue"
    assert call["params"]["arguments"] == {
        "title": f"[shape:string:11:{_h('secret plan')}]",
        "n": f"[shape:integer:1:{_h(3)}]",
        "ok": f"[shape:boolean:4:{_h(True)}]",
        "tags": [f"[shape:string:1:{_h('a')}]"],
        "x": None,
    }
    assert result["result"]["content"][0]["text"] == f"[shape:string:8:{_h('done: 42')}]"
    assert error["error"]["code"] == -32000 and error["error"]["message"].startswith("[shape:string:19:")
    assert "secret" not in json.dumps([call, result, error]).replace("[shape", "")
    assert Capture("shape", b"t" * 32).messages([CALL]) != [call]  # another deployment's salt: other hashes


def test_metadata_keeps_who_what_and_status_only() -> None:
    c = Capture("metadata", SALT)
    assert c.messages([CALL, RESULT, ERROR]) == [
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "create_issue"}},
        {"jsonrpc": "2.0", "id": 7, "result": {"isError": False}},
        {"jsonrpc": "2.0", "id": 8, "error": {"code": -32000}},
    ]
    assert c.body(b"secret") == {"capture": "metadata"}
    read = {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": "file:///home/a/secret.txt"}}
    assert c.message(read) == {"jsonrpc": "2.0", "id": 1, "method": "resources/read"}  # a URI can be a value


@pytest.mark.parametrize("level", ["shape", "metadata"])
def test_headers_keep_protocol_values_only(level: str) -> None:
    c = Capture(level, SALT)  # type: ignore[arg-type]
    got = c.headers({":path": "/mcp?q=secret", "mcp-param-region": "secret-eu", "content-type": "application/json"})
    assert got["content-type"] == "application/json"
    assert "secret" not in json.dumps(got)
    assert got[":path"].startswith("/mcp")


def test_full_and_redacted_leave_headers_to_the_redactor() -> None:
    headers = {"mcp-param-region": "eu"}
    assert Capture("full", SALT).headers(headers) == headers == Capture("redacted", SALT).headers(headers)
