"""HeaderMap -> dict, and the rule that credentials never reach a recording."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2

from extproc.envoy.headers import is_credential, recordable, recordable_path, to_dict, to_dict_and_names


def _map(*headers: base_pb2.HeaderValue) -> base_pb2.HeaderMap:
    return base_pb2.HeaderMap(headers=list(headers))


def test_to_dict_prefers_raw_value_and_falls_back_to_value() -> None:
    hm = _map(
        base_pb2.HeaderValue(key=":path", raw_value=b"/weather/mcp?x=1"),
        base_pb2.HeaderValue(key="x-legacy", value="from-value"),
        base_pb2.HeaderValue(key="x-both", value="ignored", raw_value=b"raw wins"),
        base_pb2.HeaderValue(key="x-utf8", raw_value="héllo".encode()),
        base_pb2.HeaderValue(key="x-binary", raw_value=b"a\xffb"),
    )

    assert to_dict(hm) == {
        ":path": "/weather/mcp?x=1",
        "x-legacy": "from-value",
        "x-both": "raw wins",
        "x-utf8": "héllo",
        "x-binary": "a\ufffdb",
    }


def test_to_dict_lowercases_and_joins_repeated_headers_in_order() -> None:
    hm = _map(
        base_pb2.HeaderValue(key="Accept", raw_value=b"application/json"),
        base_pb2.HeaderValue(key="x-other", raw_value=b"1"),
        base_pb2.HeaderValue(key="accept", raw_value=b"text/event-stream"),
        base_pb2.HeaderValue(key="ACCEPT", value="*/*"),
    )

    assert to_dict(hm) == {"accept": "application/json, text/event-stream, */*", "x-other": "1"}


def test_to_dict_empty() -> None:
    assert to_dict(base_pb2.HeaderMap()) == {}


def test_to_dict_and_names_keeps_the_names_as_sent_repeats_included() -> None:
    """One pass gives the dict and the names a duplicated MCP header is refused by (mcp/protocol.check_headers)."""
    hm = _map(
        base_pb2.HeaderValue(key="Mcp-Method", raw_value=b"tools/call"),
        base_pb2.HeaderValue(key="x-other", value="1"),
        base_pb2.HeaderValue(key="mcp-method", raw_value=b"tools/list"),
    )

    headers, names = to_dict_and_names(hm)

    assert headers == to_dict(hm) == {"mcp-method": "tools/call, tools/list", "x-other": "1"}
    assert names == ["Mcp-Method", "x-other", "mcp-method"]


@pytest.mark.parametrize(
    "name",
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-amz-security-token",
        "x-goog-api-key",
        "x-csrf-token",
        "x-client-secret",
        "x-db-password",
        "x-upstream-apikey",
        "x-aws-credential",
    ],
)
def test_credential_headers_are_dropped(name: str) -> None:
    kept, dropped, _ = recordable({":path": "/a/mcp", name: "s3cr3t", "accept": "*/*"})

    assert is_credential(name)
    assert dropped == [name]
    assert kept == {":path": "/a/mcp", "accept": "*/*"}
    assert "s3cr3t" not in repr(kept)


@pytest.mark.parametrize(
    "name",
    [
        ":path",
        ":authority",
        "mcp-session-id",
        "mcp-protocol-version",
        "content-type",
        "accept",
        "user-agent",
        "x-request-id",
    ],
)
def test_ordinary_headers_are_kept(name: str) -> None:
    kept, dropped, _ = recordable({name: "v"})

    assert not is_credential(name)
    assert (kept, dropped) == ({name: "v"}, [])


def test_recordable_on_a_converted_header_map() -> None:
    hm = _map(
        base_pb2.HeaderValue(key="Authorization", raw_value=b"Bearer abc.def.ghi"),
        base_pb2.HeaderValue(key="Cookie", raw_value=b"sid=1"),
        base_pb2.HeaderValue(key="Mcp-Session-Id", raw_value=b"sess-42"),
    )

    kept, dropped, _ = recordable(to_dict(hm))

    assert kept == {"mcp-session-id": "sess-42"}
    assert dropped == ["authorization", "cookie"]


@pytest.mark.parametrize(
    ("name", "credential"),
    [
        pytest.param("x-forwarded-authorization", True, id="forwarded-authorization"),
        pytest.param("x-functions-key", True, id="functions-key"),
        pytest.param(":path", False, id="path-kept-its-query-redacted-instead"),
        pytest.param(":authority", False, id="authority-kept"),
        pytest.param("mcp-session-id", False, id="session-kept"),
        pytest.param("accept", False, id="accept-kept"),
    ],
)
def test_credential_classification_of_more_headers(name: str, credential: bool) -> None:
    assert is_credential(name) is credential


_R = "[REDACTED:builtin-password-field]"


@pytest.mark.parametrize(
    ("path", "recorded"),
    [
        pytest.param("/demo/mcp", "/demo/mcp", id="no-query"),
        pytest.param("/demo/mcp?access_token=eyJabc&x=1", f"/demo/mcp?access_token={_R}&x=1", id="token"),
        pytest.param("/demo/mcp?api_key=k&sig=s&page=2", f"/demo/mcp?api_key={_R}&sig={_R}&page=2", id="keys"),
        pytest.param("/demo/mcp?pat=ghp_x&jwt=e&x-pass=p", f"/demo/mcp?pat={_R}&jwt={_R}&x-pass={_R}", id="more-names"),
        pytest.param("/demo/mcp?Api%5FKey=k", f"/demo/mcp?Api%5FKey={_R}", id="encoded-name"),
        pytest.param("/demo/mcp?flag", "/demo/mcp?flag", id="bare-name"),
    ],
)
def test_recordable_path_hides_credential_query_values(path: str, recorded: str) -> None:
    assert recordable_path(path)[0] == recorded


# --- values: the built-in and the policy's value patterns, recorded with the rule that matched ------------------

_JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"
_GHP = "ghp_" + "a1B2c3D4" * 5


def _redactor(*rules: dict):  # type: ignore[no-untyped-def]
    from extproc.policy.model import Redaction
    from extproc.policy.redact import compile_redactor

    return compile_redactor([Redaction.model_validate(r) for r in rules], defaults=True)


@pytest.mark.parametrize(
    ("name", "value", "rule"),
    [
        pytest.param("x-access", "AKIAIOSFODNN7EXAMPLE", "builtin-aws-access-key", id="aws-key-in-any-header"),
        pytest.param("x-forwarded-claims", f"v={_JWT}", "builtin-jwt", id="jwt"),
        pytest.param("x-upstream", f"Bearer {_JWT}", "builtin-bearer-token", id="bearer"),
        pytest.param("x-gh", _GHP, "builtin-github-token", id="github-token"),
        pytest.param("x-tenant", "tenant-4711", "tenant-ids", id="policy-pattern"),
    ],
)
def test_header_values_go_through_the_value_patterns(name: str, value: str, rule: str) -> None:
    redactor = _redactor({"name": "tenant-ids", "pattern": r"tenant-\d+"})

    kept, dropped, found = recordable({":path": "/a/mcp", name: value, "accept": "*/*"}, redactor)

    assert dropped == [] and kept["accept"] == "*/*"
    assert f"[REDACTED:{rule}]" in kept[name] and value not in kept[name]
    assert (found[0]["rule"], found[0]["pointer"], found[0]["kind"]) == (rule, f"/headers/{name}", "pattern")


@pytest.mark.parametrize(
    ("name", "dropped"),
    [
        pytest.param("x-github-pat", True, id="pat"),
        pytest.param("x-pass", True, id="pass"),
        pytest.param("x-tenant-secret", True, id="secret"),
        pytest.param("x-keyboard-layout", False, id="keyboard-is-not-key"),
        pytest.param("x-author", False, id="author-is-not-auth"),
    ],
)
def test_header_names_use_the_one_classifier(name: str, dropped: bool) -> None:
    _, removed, _ = recordable({name: "v"}, _redactor())
    assert (removed == [name]) is dropped


def test_policy_key_rules_apply_to_header_and_query_names() -> None:
    redactor = _redactor({"name": "internal-ids", "key": "x-internal-.*|internal_id"})

    kept, _, found = recordable({":path": "/a/mcp?internal_id=42&page=1", "x-internal-user": "u-1"}, redactor)

    assert kept == {
        ":path": "/a/mcp?internal_id=[REDACTED:internal-ids]&page=1",
        "x-internal-user": _mark("internal-ids"),
    }
    assert {(f["rule"], f["pointer"]) for f in found} == {
        ("internal-ids", "/query/internal_id"),
        ("internal-ids", "/headers/x-internal-user"),
    }


def _mark(rule: str) -> str:
    return f"[REDACTED:{rule}]"


def test_query_values_are_decoded_before_the_patterns_and_replaced_whole() -> None:
    path = f"/demo/mcp?pat=x&q=Bearer%20{_JWT[:20]}abc&note={_GHP}&page=2"

    recorded, found = recordable_path(path, _redactor())

    assert recorded == (
        f"/demo/mcp?pat={_mark('builtin-password-field')}&q={_mark('builtin-bearer-token')}"
        f"&note={_mark('builtin-github-token')}&page=2"
    )
    assert [f["pointer"] for f in found] == ["/query/pat", "/query/q", "/query/note"]


def test_a_token_in_the_path_itself_is_redacted() -> None:
    recorded, found = recordable_path(f"/demo/mcp/{_GHP}/x", _redactor())
    assert recorded == f"/demo/mcp/{_mark('builtin-github-token')}/x"
    assert found[0]["pointer"] == "/path"
