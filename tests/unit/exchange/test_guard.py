"""What a guardrail's modify leaves on the record, at each capture level (policy/capture.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from extproc.exchange.guard import _recorded_arguments
from extproc.policy.capture import Capture, CaptureLevel
from extproc.policy.loader import load_policy

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
