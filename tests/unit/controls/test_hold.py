"""The 2026-07-28 side of a held call: who gets a URL elicitation, and the retry the server gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from policy_helpers import SERVERS, write

from extproc.controls.hold import (
    INPUT_KEY,
    asks_by_url,
    declined,
    input_required,
    shown_arguments,
    strip_input_response,
)
from extproc.policy import load_policy
from extproc.policy.capture import Capture

CAPS = "io.modelcontextprotocol/clientCapabilities"
VERSION = "io.modelcontextprotocol/protocolVersion"


def _call(meta: dict | None = None, **params: object) -> dict:
    body: dict = {"name": "add", "arguments": {"a": 1}, **params}
    if meta is not None:
        body["_meta"] = meta
    return {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": body}


@pytest.mark.parametrize(
    ("meta", "expected"),
    [
        pytest.param({VERSION: "2026-07-28", CAPS: {"elicitation": {"url": {}}}}, True, id="2026-with-url"),
        pytest.param({VERSION: "2026-07-28", CAPS: {"elicitation": {"form": {}}}}, False, id="2026-form-only"),
        pytest.param({VERSION: "2026-07-28", CAPS: {}}, False, id="2026-no-elicitation"),
        pytest.param({VERSION: "2025-11-25", CAPS: {"elicitation": {"url": {}}}}, False, id="2025"),
        pytest.param({VERSION: 2026, CAPS: {"elicitation": {"url": {}}}}, False, id="version-not-a-string"),
        pytest.param(None, False, id="no-meta"),
    ],
)
def test_who_gets_a_url_elicitation(meta: dict | None, expected: bool) -> None:
    assert asks_by_url(_call(meta)) is expected


def test_a_declined_elicitation_is_seen() -> None:
    assert declined(_call(inputResponses={INPUT_KEY: {"action": "decline"}}))
    assert not declined(_call(inputResponses={INPUT_KEY: {"action": "accept"}}))
    assert not declined(_call(inputResponses={"other": {"action": "cancel"}}))


def test_the_server_never_gets_the_answer_to_the_gateways_question() -> None:
    mine = json.dumps(_call(inputResponses={INPUT_KEY: {"action": "accept"}})).encode()
    assert json.loads(strip_input_response(mine) or b"")["params"] == {"name": "add", "arguments": {"a": 1}}
    both = json.dumps(_call(inputResponses={INPUT_KEY: {"action": "accept"}, "its": {"action": "accept"}})).encode()
    assert json.loads(strip_input_response(both) or b"")["params"]["inputResponses"] == {"its": {"action": "accept"}}
    assert strip_input_response(json.dumps(_call()).encode()) is None
    lone = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"t":"\\ud800"},' \
        b'"inputResponses":{"' + INPUT_KEY.encode() + b'":{"action":"accept"}}}}'  # fmt: skip
    assert b"\\ud800" in (strip_input_response(lone) or b"")


def test_input_required_asks_to_open_the_approval_page() -> None:
    doc = input_required(4, "ap-0123456789abcdef0123", "why", "https://gw/audit/approvals/ap-0123456789abcdef0123")
    ask = doc["result"]["inputRequests"][INPUT_KEY]
    assert doc["id"] == 4 and doc["result"]["resultType"] == "input_required"
    url = "https://gw/audit/approvals/ap-0123456789abcdef0123"
    params = {"mode": "url", "message": "why", "url": url, "elicitationId": "ap-0123456789abcdef0123"}
    assert ask == {"method": "elicitation/create", "params": params}


CAPTURE_POLICY = """
apiVersion: mcp-extproc/v1
recording:
  - servers: [github]
    capture: full
  - servers: [jira]
    capture: shape
  - servers: [demo]
    tools: [delete_*]
    capture: metadata
"""


@pytest.mark.parametrize(
    ("server", "tool", "keeps", "drops"),
    [
        pytest.param("github", "create_issue", ["secret plan", "hunter2"], [], id="full"),
        pytest.param("demo", "create_issue", ["secret plan"], ["hunter2"], id="redacted"),
        pytest.param("jira", "create_issue", ["[shape:string:11:", '"title"'], ["secret plan", "hunter2"], id="shape"),
        pytest.param("demo", "delete_repo", [], ["secret plan", "hunter2", "title"], id="metadata"),
    ],
)
def test_a_request_keeps_the_arguments_at_the_calls_capture_level(
    tmp_path: Path, server: str, tool: str, keeps: list[str], drops: list[str]
) -> None:
    write(tmp_path, "policy.yaml", CAPTURE_POLICY)
    policy = load_policy(tmp_path, SERVERS)
    capture = Capture(policy.capture(server, [tool]), b"s" * 32)
    shown = shown_arguments(policy, server, capture, {"title": "secret plan", "password": "hunter2"})
    assert all(k in shown for k in keeps) and not any(d in shown for d in drops)
