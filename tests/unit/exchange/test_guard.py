"""What a guardrail's modify leaves on the record, at each capture level (policy/capture.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from extproc.exchange.guard import ResultGuard, _recorded_arguments, _recorded_result
from extproc.mcp.body import dumps
from extproc.mcp.sse import SseEvent, format_event
from extproc.policy.capture import Capture, CaptureLevel
from extproc.policy.loader import load_policy
from extproc.tools.guardrail import _parse

CALL = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "tools/call",
    "params": {"name": "echo", "arguments": {"text": "AKIAIOSFODNN7EXAMPLE x"}},
}


@pytest.mark.parametrize(
    ("level", "check"),
    [
        ("full", lambda a: a == {"text": "AKIAIOSFODNN7EXAMPLE x"}),
        ("redacted", lambda a: a == {"text": "[REDACTED:builtin-aws-access-key] x"}),
        ("shape", lambda a: a is not None and a["text"].startswith("[shape:string:22:")),
        ("metadata", lambda a: a is None),
    ],
)
def test_modified_arguments_follow_the_capture_level(
    tmp_path: Path, level: CaptureLevel, check: Callable[[object], bool]
) -> None:
    (tmp_path / "p.yaml").write_text("apiVersion: mcp-extproc/v1\n")
    policy = load_policy(tmp_path, {"demo"})
    assert check(_recorded_arguments(policy, "demo", CALL, Capture(level, b"s" * 32)))


RESULT = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "AKIAIOSFODNN7EXAMPLE x"}]}}


@pytest.mark.parametrize(
    ("level", "check"),
    [
        ("full", lambda r: r["content"][0]["text"] == "AKIAIOSFODNN7EXAMPLE x"),
        ("redacted", lambda r: r["content"][0]["text"] == "[REDACTED:builtin-aws-access-key] x"),
        ("shape", lambda r: r is not None and r["content"][0]["text"].startswith("[shape:string:22:")),
        ("metadata", lambda r: r is None),
    ],
)
def test_a_modified_result_follows_the_capture_level(
    tmp_path: Path, level: CaptureLevel, check: Callable[[object], bool]
) -> None:
    (tmp_path / "p.yaml").write_text("apiVersion: mcp-extproc/v1\n")
    policy = load_policy(tmp_path, {"demo"})
    assert check(_recorded_result(policy, "demo", RESULT, Capture(level, b"s" * 32)))


def test_an_answer_about_a_result_modifies_the_result_only() -> None:
    assert _parse({"verdict": "modify", "result": {"content": []}}, 1.0, "result").result == {"content": []}
    assert _parse({"verdict": "modify", "arguments": {"a": 1}}, 1.0, "result").verdict == "error"
    assert _parse({"verdict": "modify", "arguments": {"a": 1}}, 1.0).arguments == {"a": 1}


def test_a_replaced_sse_event_that_cannot_be_found_withholds_the_bytes() -> None:
    """Fail closed: bytes where the judged event is not found as sent never go out with it unreplaced."""
    guard = ResultGuard.__new__(ResultGuard)
    raw = format_event(dumps(RESULT), "message", "7")
    error = {"jsonrpc": "2.0", "id": 1, "error": {"code": -32005, "message": "no"}}
    guard._events = [(SseEvent(data=dumps(RESULT), event="message", id="7", raw=raw), error)]
    assert (
        guard.sse(b"before\n\n" + raw + b"after\n\n")
        == b"before\n\n" + format_event(dumps(error), "message", "7") + b"after\n\n"
    )
    guard._events = [(SseEvent(data=dumps(RESULT), event="message", id="7", raw=raw), error)]
    assert guard.sse(b"rewritten on the way\n\n") == format_event(dumps(error), "message", "7")
