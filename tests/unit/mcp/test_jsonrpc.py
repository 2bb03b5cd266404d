"""JSON-RPC body parsing: one message or a batch; anything else comes back with ``error`` set, never raised."""

from __future__ import annotations

import json

import pytest

from extproc.mcp.jsonrpc import McpCall, error_response, id_text, is_request, loads, parse_body, to_call

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
NOTE = {"jsonrpc": "2.0", "method": "notifications/initialized"}
RESULT = {"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}
ERROR = {"jsonrpc": "2.0", "id": "x", "error": {"code": -32601, "message": "no such method"}}


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(INIT, id="request"),
        pytest.param(NOTE, id="notification"),
        pytest.param(RESULT, id="result"),
        pytest.param(ERROR, id="error-response"),
    ],
)
def test_parse_body_single_message(message: dict) -> None:
    parsed = parse_body(json.dumps(message).encode())

    assert parsed.messages == (message,)
    assert parsed.batch is False
    assert parsed.error is None


def test_parse_body_batch_keeps_order_and_flags_batch() -> None:
    batch = [INIT, NOTE, {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}]

    parsed = parse_body(json.dumps(batch).encode())

    assert parsed.messages == tuple(batch)
    assert parsed.batch is True
    assert parsed.error is None


def test_parse_body_accepts_surrounding_whitespace_and_utf8() -> None:
    msg = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"t": "héllo ☃"}}}

    parsed = parse_body(b"\r\n  " + json.dumps(msg, ensure_ascii=False).encode() + b"\n")

    assert parsed.messages == (msg,)


@pytest.mark.parametrize(
    ("body", "error_start"),
    [
        pytest.param(b"", "empty body", id="empty"),
        pytest.param(b" \r\n\t", "empty body", id="whitespace-only"),
        pytest.param(b"[]", "empty batch", id="empty-batch"),
        pytest.param(b"{not json", "not JSON", id="garbage"),
        pytest.param(b'{"jsonrpc":"2.0","method":"x"} trailing', "not JSON", id="trailing-garbage"),
        pytest.param(b"\xff\xfe\xfa", "not JSON", id="undecodable-bytes"),
        pytest.param(b'{"jsonrpc":"2.0","method":"\xc3("}', "not JSON", id="invalid-utf8-in-string"),
        pytest.param(b'"just a string"', "not a JSON-RPC 2.0 message", id="scalar"),
        pytest.param(b"42", "not a JSON-RPC 2.0 message", id="number"),
        pytest.param(b"null", "not a JSON-RPC 2.0 message", id="null"),
        pytest.param(b'{"id":1,"method":"tools/list"}', "not a JSON-RPC 2.0 message", id="missing-jsonrpc"),
        pytest.param(b'{"jsonrpc":"1.0","id":1,"method":"x"}', "not a JSON-RPC 2.0 message", id="wrong-version"),
        pytest.param(b'{"jsonrpc":"2.0","id":1}', "not a JSON-RPC 2.0 message", id="no-method-result-or-error"),
        pytest.param(
            b'[{"jsonrpc":"2.0","id":1,"method":"a"}, 7]',
            "batch element is not a JSON-RPC 2.0 message",
            id="batch-scalar",
        ),
        pytest.param(
            b'[{"jsonrpc":"2.0","id":1,"method":"a"}, {"id":2}]',
            "batch element is not a JSON-RPC 2.0 message",
            id="batch-non-jsonrpc-element",
        ),
        pytest.param(b"[[]]", "batch element is not a JSON-RPC 2.0 message", id="nested-batch"),
    ],
)
def test_parse_body_rejects_without_raising(body: bytes, error_start: str) -> None:
    parsed = parse_body(body)

    assert parsed.error is not None
    assert parsed.error.startswith(error_start)
    assert parsed.messages == ()
    assert parsed.batch is False


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(INIT, True, id="request"),
        pytest.param(NOTE, True, id="notification"),
        pytest.param(RESULT, False, id="result"),
        pytest.param(ERROR, False, id="error"),
        pytest.param({"jsonrpc": "2.0", "id": 1, "method": 5}, False, id="non-string-method"),
    ],
)
def test_is_request(message: dict, expected: bool) -> None:
    assert is_request(message) is expected


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        pytest.param(
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "tools/call",
                "params": {"name": "echo", "arguments": {"text": "hi"}},
            },
            McpCall(method="tools/call", id=7, tool="echo", arguments={"text": "hi"}),
            id="tools-call",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": "r1", "method": "resources/read", "params": {"uri": "file:///etc/motd"}},
            McpCall(method="resources/read", id="r1", uri="file:///etc/motd"),
            id="resources-read",
        ),
        pytest.param(
            {
                "jsonrpc": "2.0",
                "id": 2,
                "method": "prompts/get",
                "params": {"name": "greet", "arguments": {"who": "x"}},
            },
            McpCall(method="prompts/get", id=2, prompt="greet"),
            id="prompts-get-name-is-prompt-not-tool-and-arguments-dropped",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 3}},
            McpCall(method="notifications/cancelled"),
            id="notification-has-no-id",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call"},
            McpCall(method="tools/call", id=1),
            id="no-params",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": None},
            McpCall(method="tools/call", id=1),
            id="null-params",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ["echo", {"a": 1}]},
            McpCall(method="tools/call", id=1),
            id="positional-params",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": 42, "arguments": {"a": 1}}},
            McpCall(method="tools/call", id=1, arguments={"a": 1}),
            id="non-string-tool-name",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": ["a"]}},
            McpCall(method="tools/call", id=1, tool="echo"),
            id="list-arguments",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": {"href": "x"}}},
            McpCall(method="resources/read", id=1),
            id="non-string-uri",
        ),
        pytest.param(
            {"jsonrpc": "2.0", "id": 1, "method": "resources/list", "params": {"name": "echo", "arguments": {"a": 1}}},
            McpCall(method="resources/list", id=1),
            id="name-and-arguments-ignored-for-other-methods",
        ),
    ],
)
def test_to_call(message: dict, expected: McpCall) -> None:
    call = to_call(message)

    assert call == expected
    assert call.is_notification is ("id" not in message)


@pytest.mark.parametrize(
    ("msg_id", "data", "expected"),
    [
        pytest.param(
            7, None, {"jsonrpc": "2.0", "id": 7, "error": {"code": -32601, "message": "nope"}}, id="int-id-no-data"
        ),
        pytest.param(
            "abc",
            {"why": "x"},
            {"jsonrpc": "2.0", "id": "abc", "error": {"code": -32601, "message": "nope", "data": {"why": "x"}}},
            id="string-id-with-data",
        ),
        pytest.param(
            None,
            0,
            {"jsonrpc": "2.0", "id": None, "error": {"code": -32601, "message": "nope", "data": 0}},
            id="null-id",
        ),
    ],
)
def test_error_response(msg_id: str | int | None, data: object, expected: dict) -> None:
    doc = error_response(msg_id, -32601, "nope", data)

    assert doc == expected
    # It is itself a JSON-RPC message (a response), so our own parser accepts it.
    assert parse_body(json.dumps(doc).encode()).messages == (expected,)


# --- strict parsing of request bodies: what the policy decides on must be what any server decodes ----------------

_CALL = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"forecast","arguments":{}}'


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(_CALL + ',"Params":{"name":"delete_repo","arguments":{}}}', "ambiguous", id="case-folded-params"),
        pytest.param(_CALL + ',"param\u017f":{"name":"delete_repo"}}', "ambiguous", id="long-s-folds-to-s"),
        pytest.param(_CALL + ',"params":{"name":"delete_repo"}}', "duplicate key", id="duplicate-params"),
        pytest.param(
            '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","Name":"delete_repo"}}',
            "ambiguous",
            id="nested-name-folded",
        ),
        pytest.param(
            '{"jsonrpc":"2.0","id":1,"error":{},"Method":"tools/call","Params":{}}',
            "ambiguous",
            id="response-smuggling",
        ),
        pytest.param('{"jsonrpc":"2.0","id":1,"method":7}', "not a JSON-RPC", id="non-string-method"),
        pytest.param('{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}', "not a JSON-RPC", id="method-and-result"),
        pytest.param("[" * 5000 + "]" * 5000, "nested too deeply", id="deep-nesting"),
    ],
)
def test_strict_parse_refuses_what_another_decoder_could_read_differently(body: str, reason: str) -> None:
    parsed = parse_body(body.encode(), strict=True)
    assert parsed.messages == ()
    assert reason in (parsed.error or "")


def test_strict_parse_accepts_ordinary_requests() -> None:
    parsed = parse_body((_CALL + "}").encode(), strict=True)
    assert parsed.error is None and parsed.messages[0]["params"]["name"] == "forecast"


def test_strict_parse_allows_any_casing_inside_tool_arguments() -> None:
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"f","arguments":{"Name":"x","URI":"y"}}}'
    parsed = parse_body(body.encode(), strict=True)
    assert parsed.error is None and parsed.messages[0]["params"]["arguments"] == {"Name": "x", "URI": "y"}


# --- duplicate request ids in a batch: "the response to id 1" must name one request --------------------------------


def _req(msg_id: object, method: str = "tools/list") -> dict:
    return {"jsonrpc": "2.0", "id": msg_id, "method": method}


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param([_req(1), _req(1, "resources/list")], id="same-int"),
        pytest.param([_req("a"), _req("a", "resources/list")], id="same-string"),
        pytest.param([_req(1), _req(1.0, "resources/list")], id="int-and-float"),
        pytest.param([_req(None), _req(None)], id="null-ids"),
        pytest.param([_req(1), {"jsonrpc": "2.0", "method": "notifications/x"}, _req(1)], id="around-a-notification"),
    ],
)
def test_strict_parse_refuses_batches_repeating_a_request_id(batch: list) -> None:
    parsed = parse_body(json.dumps(batch).encode(), strict=True)

    assert parsed.messages == ()
    assert "repeats request id" in (parsed.error or "")


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param([_req(1), _req(2)], id="distinct"),
        pytest.param([_req(1), _req("1")], id="number-and-string-differ"),
        pytest.param(
            [{"jsonrpc": "2.0", "method": "notifications/x"}, {"jsonrpc": "2.0", "method": "notifications/x"}],
            id="notifications-have-no-id",
        ),
        pytest.param([_req(1), {"jsonrpc": "2.0", "id": 1, "result": {}}], id="a-response-may-share-an-id"),
    ],
)
def test_strict_parse_accepts_batches_with_distinct_request_ids(batch: list) -> None:
    parsed = parse_body(json.dumps(batch).encode(), strict=True)

    assert parsed.error is None and len(parsed.messages) == len(batch)


CALL_NAN = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"sleep","arguments":{"delay":%s}}}'


@pytest.mark.parametrize("strict", [True, False], ids=["request", "response-or-recorded"])
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(CALL_NAN % b"NaN", id="nan"),
        pytest.param(CALL_NAN % b"Infinity", id="inf"),
        pytest.param(CALL_NAN % b"-Infinity", id="-inf"),
        pytest.param(CALL_NAN % b"[1, NaN]", id="nan-in-list"),
        pytest.param(
            b"[" + CALL_NAN % b"1" + b"," + CALL_NAN.replace(b'"id":1', b'"id":2') % b"NaN" + b"]", id="batch"
        ),
        pytest.param(b'{"jsonrpc":"2.0","id":1,"result":{"v":NaN}}', id="result"),
        pytest.param(CALL_NAN % b"[12345678901234567890, NaN]", id="nan-beside-a-long-integer"),
        pytest.param(CALL_NAN % b'"\\ud800", "x": NaN', id="nan-beside-a-lone-surrogate"),
    ],
)
def test_non_finite_numbers_are_not_json(body: bytes, strict: bool) -> None:
    # Python's json reads NaN as a float that every min/max comparison lets through; RFC 8259 has no such number.
    parsed = parse_body(body, strict=strict)

    assert parsed.messages == ()
    assert parsed.error is not None and parsed.error.startswith("not JSON") and "is not a JSON number" in parsed.error


@pytest.mark.parametrize(
    "data", ["NaN", '{"a": Infinity}', "[-Infinity]", b'{"big": 123456789012345678901, "x": NaN}', '{"\u00e9": NaN}']
)
def test_loads_refuses_non_finite_numbers(data: str | bytes) -> None:
    with pytest.raises(ValueError, match="is not a JSON number"):
        loads(data)


def test_loads_keeps_what_orjson_cannot_read_exactly() -> None:
    assert loads(b'{"big": 123456789012345678901, "s": "\\ud800", "f": 1.5e300}') == {
        "big": 123456789012345678901,
        "s": "\ud800",
        "f": 1.5e300,
    }


@pytest.mark.parametrize(
    "body",
    [b"[9223372036854775807, -9223372036854775808]", b"[9223372036854775808]", b"[-18446744073709551617]",
     b"[1e19, 12345678901234567890.0, 1234567890123456789]", b'{"s": "12345678901234567890123", "n": 1}',
     b"[123456789012345678901234567890]",
     b"[" + b"1," * 600 + b"123456789012345678901]", b'{"t": "' + b"x" * 9000 + b'", "n": 123456789012345678901}',
     b"[" + b"1," * 600 + b"2]", b'{"t": "' + b"x" * 9000 + b'", "n": 1e19}',
     '{"t": "caf\u00e9 \u4e2d\u6587", "n": 123456789012345678901, "f": 1.5, "s": "\\ud800"}'.encode()],
)  # fmt: skip
def test_integers_beyond_64_bits_stay_exact_with_the_byte_precheck(body: bytes) -> None:
    """The digit-run check before the walk gives what the standard parser gives, numbers exactly."""
    for text in (body, body.decode()):  # bytes, and a str (an SSE event's data)
        got, want = loads(text), json.loads(body)
        assert got == want and [type(v) for v in _values(got)] == [type(v) for v in _values(want)]


def _values(doc: object) -> list[object]:
    return list(doc.values()) if isinstance(doc, dict) else list(doc) if isinstance(doc, list) else [doc]


@pytest.mark.parametrize("msg_id", [7, 0, -3, 2**70, True, False, None, "7", "é", 1.5, 'a"b'])
def test_id_text_is_the_json_text_that_pairs_responses(msg_id: object) -> None:
    assert id_text(msg_id) == json.dumps(msg_id)  # a request's id and its response's id must give the same key
