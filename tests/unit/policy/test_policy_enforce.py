"""Whole-body enforcement helpers: call descriptions recorded with the server's redactions applied."""

from __future__ import annotations

from pathlib import Path

from extproc.mcp.jsonrpc import McpCall
from extproc.policy.enforce import redact_text
from extproc.policy.engine import describe_call
from extproc.policy.loader import load_policy

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: read
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [files], resources: ["https://**"]}
recording:
  - servers: [files]
    defaults: true
    redact: [{name: url-key, pattern: 'api_key=(?P<value>[A-Za-z0-9]+)'}]
"""


def test_a_secret_in_a_resource_uri_is_redacted_from_the_call_description(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path, {"files"})
    call = McpCall("resources/read", id=1, uri="https://api.example/export?api_key=SECRETKEY123456")

    text = redact_text(policy, "files", describe_call("files", call))

    assert "SECRETKEY123456" not in text
    assert "[REDACTED:" in text and text.startswith("resources/read")  # a built-in rule may win
