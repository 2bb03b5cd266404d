"""ProcessingResponse builders: what Envoy reads from each, checked on the wire form (serialized and parsed back)."""

from __future__ import annotations

import json

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.envoy import responses
from extproc.errors import Forbidden


def _wire(msg: ep.ProcessingResponse) -> ep.ProcessingResponse:
    return ep.ProcessingResponse.FromString(msg.SerializeToString())


def _set(mutation: ep.HeaderMutation) -> dict[str, bytes]:
    return {o.header.key: o.header.raw_value for o in mutation.set_headers}


def test_plain_continue_carries_no_mutation_for_any_phase() -> None:
    for phase, reply in (
        ("request_headers", responses.request_headers()),
        ("request_body", responses.request_body()),
        ("response_headers", responses.response_headers()),
        ("response_body", responses.response_body()),
    ):
        wire = _wire(reply)
        assert wire.WhichOneof("response") == phase
        common = getattr(wire, phase).response
        assert common.status == ep.CommonResponse.CONTINUE
        assert not common.HasField("header_mutation") and not common.HasField("body_mutation")
        assert not common.clear_route_cache
        assert not wire.HasField("mode_override")


def test_request_headers_overwrite_remove_and_reroute() -> None:
    wire = _wire(responses.request_headers({"x-mcp-upstream": "github", "x-user": "alice"}, ["authorization"], True))
    common = wire.request_headers.response
    assert common.clear_route_cache
    assert _set(common.header_mutation) == {"x-mcp-upstream": b"github", "x-user": b"alice"}
    assert list(common.header_mutation.remove_headers) == ["authorization"]
    # Overwrite, never append: a client's own copy of a header we set must not survive beside ours.
    actions = {o.append_action for o in common.header_mutation.set_headers}
    assert actions == {base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD}


def test_a_replaced_body_says_so_and_fixes_content_length() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    for reply, phase in (
        (responses.request_body(body), "request_body"),
        (responses.response_body(body), "response_body"),
    ):
        common = getattr(_wire(reply), phase).response
        assert common.status == ep.CommonResponse.CONTINUE_AND_REPLACE
        assert common.body_mutation.body == body
        assert _set(common.header_mutation) == {"content-length": str(len(body)).encode()}


def test_a_replaced_empty_body_is_still_a_replacement() -> None:
    common = _wire(responses.request_body(b"")).request_body.response
    assert common.status == ep.CommonResponse.CONTINUE_AND_REPLACE
    assert common.body_mutation.WhichOneof("mutation") == "body" and common.body_mutation.body == b""
    assert _set(common.header_mutation) == {"content-length": b"0"}


def test_a_streamed_chunk_is_replaced_without_touching_headers() -> None:
    # STREAMED chunks: the headers are gone already, so no header mutation (Envoy would reject it); empty holds back.
    for chunk in (b"data: {}\n\n", b""):
        common = _wire(responses.streamed_body(chunk)).response_body.response
        assert common.status == ep.CommonResponse.CONTINUE
        assert common.body_mutation.WhichOneof("mutation") == "body" and common.body_mutation.body == chunk
        assert not common.HasField("header_mutation")


def test_response_headers_can_switch_this_body_to_buffered() -> None:
    wire = _wire(responses.response_headers({"mcp-session-id": "s1"}, ["content-length"], buffer_body=True))
    assert wire.mode_override.response_body_mode == processing_mode_pb2.ProcessingMode.BUFFERED
    common = wire.response_headers.response
    assert _set(common.header_mutation) == {"mcp-session-id": b"s1"}
    assert list(common.header_mutation.remove_headers) == ["content-length"]


def test_immediate_json_reply() -> None:
    wire = _wire(responses.json_reply(401, {"error": "login"}, {"www-authenticate": 'Bearer realm="mcp"'}, "why"))
    imm = wire.immediate_response
    assert imm.status.code == 401
    assert json.loads(imm.body) == {"error": "login"}
    assert _set(imm.headers) == {"content-type": b"application/json", "www-authenticate": b'Bearer realm="mcp"'}
    assert imm.details == "why"


def test_an_error_reply_is_a_json_rpc_error_with_the_errors_status_and_safe_message() -> None:
    err = Forbidden("tool 'delete' is not allowed for alice")
    imm = _wire(responses.error_reply(err, msg_id=7)).immediate_response
    doc = json.loads(imm.body)
    assert imm.status.code == err.status
    assert doc["jsonrpc"] == "2.0" and doc["id"] == 7
    assert doc["error"] == {"code": err.jsonrpc_code, "message": err.safe_message}
    assert imm.details == "mcp_extproc_Forbidden"


def _reference_mutation(set_headers: dict[str, str], remove: list[str]) -> ep.HeaderMutation:
    """The mutation as the nested keyword constructors build it (the builders build it in place, cheaper)."""
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
    options = [
        base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=overwrite)
        for k, v in set_headers.items()
    ]
    return ep.HeaderMutation(set_headers=options, remove_headers=remove)


@pytest.mark.parametrize(
    ("set_headers", "remove", "reroute"),
    [
        pytest.param({}, [], False, id="plain"),
        pytest.param({}, [], True, id="reroute-only"),
        pytest.param({"mcp-session-id": "s1", "x-mcp-user": "alice"}, [], False, id="set"),
        pytest.param({}, ["authorization", "x-mcp-user"], False, id="remove"),
        pytest.param({"authorization": "Bearer t"}, ["x-mcp-groups"], True, id="all"),
    ],
)
def test_builders_equal_the_keyword_built_messages(
    set_headers: dict[str, str], remove: list[str], reroute: bool
) -> None:
    """Built in place, each reply is the very message the nested keyword constructors give (byte for byte)."""
    mutated = bool(set_headers or remove or reroute)
    common = (
        ep.CommonResponse(header_mutation=_reference_mutation(set_headers, remove), clear_route_cache=reroute)
        if mutated
        else ep.CommonResponse()
    )
    want = ep.ProcessingResponse(request_headers=ep.HeadersResponse(response=common))
    got = responses.request_headers(set_headers, remove, reroute)
    assert got == want and got.SerializeToString(deterministic=True) == want.SerializeToString(deterministic=True)
    if not reroute:
        buffered = processing_mode_pb2.ProcessingMode(response_body_mode=processing_mode_pb2.ProcessingMode.BUFFERED)
        want = ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=common), mode_override=buffered)
        assert responses.response_headers(set_headers, remove, buffer_body=True) == want
    assert responses.header_mutation(set_headers, remove) == _reference_mutation(set_headers, remove)


def test_body_replies_equal_the_keyword_built_messages() -> None:
    cont = ep.BodyResponse(response=ep.CommonResponse())
    assert responses.request_body() == ep.ProcessingResponse(request_body=cont)
    assert responses.response_body() == ep.ProcessingResponse(response_body=cont)
    replaced = ep.BodyResponse(
        response=ep.CommonResponse(
            status=ep.CommonResponse.CONTINUE_AND_REPLACE,
            body_mutation=ep.BodyMutation(body=b"{}"),
            header_mutation=_reference_mutation({"content-length": "2"}, []),
        )
    )
    assert responses.request_body(b"{}") == ep.ProcessingResponse(request_body=replaced)
    assert responses.response_body(b"{}") == ep.ProcessingResponse(response_body=replaced)
    streamed = ep.BodyResponse(response=ep.CommonResponse(body_mutation=ep.BodyMutation(body=b"")))
    assert responses.streamed_body(b"") == ep.ProcessingResponse(response_body=streamed)


def test_each_reply_is_its_own_message() -> None:
    """A caller may add to a reply (trace context headers on a request body's reply): never a shared message."""
    first = responses.request_body()
    first.request_body.response.header_mutation.MergeFrom(responses.header_mutation({"traceparent": "00-x"}))
    assert responses.request_body() == ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse()))
    second = responses.response_body()
    second.response_body.response.status = ep.CommonResponse.CONTINUE_AND_REPLACE
    assert responses.response_body().response_body.response.status == ep.CommonResponse.CONTINUE
