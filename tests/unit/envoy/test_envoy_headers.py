"""HeaderMap -> dict, and the rule that credentials never reach a recording."""

from __future__ import annotations

import pytest
from envoy.config.core.v3 import base_pb2

from extproc.envoy.headers import is_credential, recordable, recordable_path, to_dict


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
    kept, dropped = recordable({":path": "/a/mcp", name: "s3cr3t", "accept": "*/*"})

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
    kept, dropped = recordable({name: "v"})

    assert not is_credential(name)
    assert (kept, dropped) == ({name: "v"}, [])


def test_recordable_on_a_converted_header_map() -> None:
    hm = _map(
        base_pb2.HeaderValue(key="Authorization", raw_value=b"Bearer abc.def.ghi"),
        base_pb2.HeaderValue(key="Cookie", raw_value=b"sid=1"),
        base_pb2.HeaderValue(key="Mcp-Session-Id", raw_value=b"sess-42"),
    )

    kept, dropped = recordable(to_dict(hm))

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


@pytest.mark.parametrize(
    ("path", "recorded"),
    [
        pytest.param("/demo/mcp", "/demo/mcp", id="no-query"),
        pytest.param("/demo/mcp?access_token=eyJabc&x=1", "/demo/mcp?access_token=[REDACTED]&x=1", id="token"),
        pytest.param(
            "/demo/mcp?api_key=k&sig=s&page=2", "/demo/mcp?api_key=[REDACTED]&sig=[REDACTED]&page=2", id="keys"
        ),
        pytest.param("/demo/mcp?flag", "/demo/mcp?flag", id="bare-name"),
    ],
)
def test_recordable_path_hides_credential_query_values(path: str, recorded: str) -> None:
    assert recordable_path(path) == recorded
