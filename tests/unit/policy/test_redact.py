"""Recording redactions: paths, keys, patterns, built-ins; nothing redacted survives, every redaction is reported."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from extproc.policy import CompiledPolicy, redact
from extproc.policy.enforce import redact_for_record
from extproc.policy.redact import compile_redactor

POLICY = r"""
apiVersion: mcp-extproc/v1
recording:
  - servers: ["*"]
    redact:
      - {name: ssn, pattern: '\b\d{3}-\d{2}-\d{4}\b'}
  - servers: [github]
    redact:
      - {name: gh-token, pattern: 'ghp_[A-Za-z0-9]{36}'}
      - {name: file-content, path: /params/arguments/content}
      - {name: every-file, path: /params/arguments/files/*/content}
      - {name: second-item, path: /result/items/1}
      - {name: slash-key, path: /params/arguments/a~1b}
      - {name: tilde-key, path: /params/arguments/c~0d}
      - {name: webhook-secret, key: '(?i)webhook_secret'}
      - {name: pin, pattern: 'PIN (?P<value>\d{4})'}
  - servers: [jira]
    defaults: false
"""

GH_TOKEN = "ghp_" + "A1b2" * 9
SECRETS = ["s3cr3t-content", "file-1-body", "file-2-body", "item-one", "slashed", "tilded", "hook-value", "hunter2"]


@pytest.fixture
def policy(compile_yaml: Callable[..., CompiledPolicy]) -> CompiledPolicy:
    return compile_yaml(POLICY)


def message() -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "push",
            "arguments": {
                "content": "s3cr3t-content",
                "files": [{"path": "a", "content": "file-1-body"}, {"path": "b", "content": "file-2-body"}],
                "a/b": "slashed",
                "c~d": "tilded",
                "config": {"Webhook_Secret": "hook-value", "password": "hunter2", "empty_password": ""},
                "note": f"token {GH_TOKEN}, ssn 123-45-6789, PIN 4821 ok",
            },
        },
        "result": {"items": ["item-zero", "item-one"]},
    }


def test_redactions_remove_secrets_and_report_rule_and_pointer(policy: CompiledPolicy) -> None:
    original = message()
    out, found = redact(policy, "github", original)
    text = json.dumps(out)
    for secret in [*SECRETS, GH_TOKEN, "123-45-6789", "4821"]:
        assert secret not in text
    assert original == message()  # the input is never mutated

    args = out["params"]["arguments"]
    assert args["content"] == "[REDACTED:file-content]"
    assert [f["content"] for f in args["files"]] == ["[REDACTED:every-file]"] * 2
    assert [f["path"] for f in args["files"]] == ["a", "b"]  # siblings kept
    assert out["result"]["items"] == ["item-zero", "[REDACTED:second-item]"]
    assert args["a/b"] == "[REDACTED:slash-key]" and args["c~d"] == "[REDACTED:tilde-key]"
    assert args["config"] == {
        "Webhook_Secret": "[REDACTED:webhook-secret]",
        "password": "[REDACTED:builtin-password-field]",
        "empty_password": "",  # nothing to hide
    }
    assert args["note"] == "token [REDACTED:gh-token], ssn [REDACTED:ssn], PIN [REDACTED:pin] ok"

    reported = {(r.rule, r.pointer, r.kind) for r in found}
    assert reported == {
        ("file-content", "/params/arguments/content", "path"),
        ("every-file", "/params/arguments/files/0/content", "path"),
        ("every-file", "/params/arguments/files/1/content", "path"),
        ("second-item", "/result/items/1", "path"),
        ("slash-key", "/params/arguments/a~1b", "path"),
        ("tilde-key", "/params/arguments/c~0d", "path"),
        ("webhook-secret", "/params/arguments/config/Webhook_Secret", "key"),
        ("builtin-password-field", "/params/arguments/config/password", "key"),
        ("gh-token", "/params/arguments/note", "pattern"),
        ("ssn", "/params/arguments/note", "pattern"),
        ("pin", "/params/arguments/note", "pattern"),
    }
    assert all(secret not in repr(found) for secret in SECRETS)  # reports never carry the secret


BEARER = "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
PEM = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nq9s8\n-----END RSA PRIVATE KEY-----"


@pytest.mark.parametrize(
    ("text", "rule", "secret"),
    [
        pytest.param(f"Authorization: {BEARER}", "builtin-bearer-token", "c2lnbmF0dXJl", id="bearer"),
        pytest.param("id_token eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.sig", "builtin-jwt", "eyJzdWIiOiJ4In0", id="jwt"),
        pytest.param("key AKIAIOSFODNN7EXAMPLE here", "builtin-aws-access-key", "AKIAIOSFODNN7EXAMPLE", id="aws-id"),
        pytest.param(
            "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "builtin-aws-secret-key",
            "wJalrXUtnFEMI",
            id="aws-secret",
        ),
        pytest.param(f"key:\n{PEM}\nend", "builtin-private-key", "MIIEowIBAAKCAQEA", id="private-key"),
        pytest.param("login with password=hunter2 now", "builtin-password-assignment", "hunter2", id="password-text"),
    ],
)
def test_builtin_patterns(policy: CompiledPolicy, text: str, rule: str, secret: str) -> None:
    out, found = redact(policy, "demo", {"result": {"content": [{"type": "text", "text": text}]}})
    redacted = out["result"]["content"][0]["text"]
    assert secret not in redacted
    assert f"[REDACTED:{rule}]" in redacted
    assert (rule, "/result/content/0/text") in {(r.rule, r.pointer) for r in found}


@pytest.mark.parametrize("key", ["password", "db_password", "clientSecret", "api_key", "access_token", "Authorization"])
def test_builtin_password_fields(policy: CompiledPolicy, key: str) -> None:
    out, found = redact(policy, "demo", {"params": {"arguments": {key: "v4lue", "max_tokens": 5}}})
    assert out["params"]["arguments"] == {key: "[REDACTED:builtin-password-field]", "max_tokens": 5}
    assert [r.rule for r in found] == ["builtin-password-field"]


def test_defaults_false_turns_builtins_off(policy: CompiledPolicy) -> None:
    out, found = redact(policy, "jira", {"params": {"password": "hunter2", "ssn": "123-45-6789"}})
    assert out == {"params": {"password": "hunter2", "ssn": "[REDACTED:ssn]"}}  # the "*" entry still applies
    assert [r.rule for r in found] == ["ssn"]


def test_server_rules_do_not_leak_to_other_servers(policy: CompiledPolicy) -> None:
    out, found = redact(policy, "demo", {"params": {"arguments": {"content": "visible"}}})
    assert out == {"params": {"arguments": {"content": "visible"}}} and found == []


def test_unknown_server_gets_star_and_builtin_rules(policy: CompiledPolicy) -> None:
    out, _ = redact(policy, "not-configured", {"x": "ssn 123-45-6789", "password": "p"})
    assert out == {"x": "ssn [REDACTED:ssn]", "password": "[REDACTED:builtin-password-field]"}


def test_batch_pointers_start_with_the_element_index(policy: CompiledPolicy) -> None:
    batch = [{"params": {"arguments": {"content": "a"}}}, {"params": {"arguments": {"content": "b"}}}]
    out, found = redact(policy, "github", copy.deepcopy(batch))
    assert [m["params"]["arguments"]["content"] for m in out] == ["[REDACTED:file-content]"] * 2
    assert [r.pointer for r in found] == ["/0/params/arguments/content", "/1/params/arguments/content"]


def test_pattern_counts_matches(policy: CompiledPolicy) -> None:
    _, found = redact(policy, "demo", {"t": "111-22-3333 and 444-55-6666"})
    assert [(r.rule, r.count) for r in found] == [("ssn", 2)]


def test_plain_string_payload(policy: CompiledPolicy) -> None:
    out, found = redact(policy, "demo", "not json: password=hunter2")
    assert out == "not json: password=[REDACTED:builtin-password-assignment]" and len(found) == 1


def test_redaction_error_stores_nothing(policy: CompiledPolicy) -> None:
    deep: Any = "secret"
    for _ in range(5000):
        deep = [deep]
    out, found = redact(policy, "demo", deep)
    assert out == "[REDACTED:redaction-error]" and found[0].rule == "redaction-error"


def test_a_failed_redaction_records_no_message(policy: CompiledPolicy) -> None:
    deep: Any = "secret"
    for _ in range(5000):
        deep = [deep]
    message = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "t", "arguments": {"a": deep}}}
    messages, raw, found = redact_for_record(policy, "demo", [message], b"{...}")
    assert (messages, raw) == ([], None) and found[0]["rule"] == "redaction-error"


def _mcp_wire_field_names() -> list[str]:
    """Every field name of the installed MCP SDK's schema as it is spelled on the wire (the alias when it has one)."""
    import importlib
    import inspect
    import pkgutil

    import mcp.types
    import pydantic

    modules = [
        mcp.types,
        *(importlib.import_module(f"mcp.types.{m.name}") for m in pkgutil.iter_modules(mcp.types.__path__)),
    ]
    names = {
        f.alias or name
        for module in modules
        for cls in vars(module).values()
        if inspect.isclass(cls) and issubclass(cls, pydantic.BaseModel)
        for name, f in cls.model_fields.items()
    }
    # _meta keys the SDK reserves, and fields of drafts the gateway already speaks (mcp/request_state.py)
    names |= {"io.modelcontextprotocol/subscriptionId", "io.modelcontextprotocol/ui", "requestState"}
    assert {"progressToken", "cursor", "nextCursor", "_meta", "maxTokens"} <= names  # the schema was found
    return sorted(names)


@pytest.mark.parametrize("name", _mcp_wire_field_names())
def test_no_builtin_rule_redacts_an_mcp_schema_field(name: str) -> None:
    """The built-ins must not blank MCP's own fields (progressToken made every progress event a redaction)."""
    builtins = compile_redactor([])
    message = {"jsonrpc": "2.0", "method": "m", "params": {name: "opaque-41d2", "_meta": {name: 7}}}
    out, found = builtins.apply(message)
    assert (out, found) == (message, [])
    for text in (name, f"{name}: opaque-41d2", f"{name}=opaque-41d2"):
        assert builtins.text(text, "/t") == (text, [])


@pytest.mark.parametrize(
    "name", ["password", "apiKey", "api_key", "clientSecret", "access_token", "token", "refreshToken", "authorization"]
)
def test_credential_names_are_still_redacted_by_the_builtins(name: str) -> None:
    out, found = compile_redactor([]).apply({"params": {name: "hunter2"}})
    assert out == {"params": {name: "[REDACTED:builtin-password-field]"}}
    assert [(r.rule, r.pointer) for r in found] == [("builtin-password-field", f"/params/{name}")]
