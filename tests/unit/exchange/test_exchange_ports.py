"""Exchange phases with fakes behind the ports (authenticator, policy source, event sink): no gRPC, no Envoy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from exchange_fakes import (
    ALICE,
    KEY,
    SCOPE,
    FakePolicy,
    FakeSink,
    _body,
    _call,
    _gateway,
    _headers,
    _request,
    _status,
    load_fake_policy,
)

from extproc.authn.principal import Principal
from extproc.authn.session_binding import bind
from extproc.errors import StoreError
from extproc.exchange import Exchange


@pytest.fixture
def policy(tmp_path: Path) -> FakePolicy:
    return load_fake_policy(tmp_path)


async def test_unauthenticated_caller_is_answered_and_not_recorded(policy: FakePolicy) -> None:
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    reply = await ex.on_request_headers(_request(token=None))
    assert _status(reply) == 401
    assert sink.events == []


async def test_authenticated_admission_records_the_start_under_the_caller(policy: FakePolicy) -> None:
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    reply = await ex.on_request_headers(_request(session=bind("srv-1", ALICE, KEY, SCOPE)))
    assert _status(reply) is None
    [start] = sink.events
    assert start.type == "exchange.start" and start.session == "srv-1"
    assert start.principal["subject"] == "alice"  # type: ignore[attr-defined]
    mutation = reply.request_headers.response.header_mutation
    assert "authorization" in mutation.remove_headers
    assert {h.header.key: h.header.raw_value for h in mutation.set_headers}["mcp-session-id"] == b"srv-1"


async def test_someone_elses_session_is_refused_and_recorded(policy: FakePolicy) -> None:
    sink = FakeSink()
    bob = Principal(issuer="https://idp", subject="bob", username="bob")
    ex = Exchange(_gateway(sink, policy))
    held = await ex.on_request_headers(_request(session=bind("srv-1", bob, KEY, SCOPE)))
    assert _status(held) is None  # a POST is answered once its body names the request
    reply = await ex.on_request_body(_body(_call("echo", 4, text="a")))
    assert _status(reply) == 403 and json.loads(reply.immediate_response.body)["id"] == 4
    assert sink.types() == ["exchange.start", "exchange.end"]
    assert {e.session for e in sink.events} == {"x-ex1"}  # never joins the session it named


async def test_batch_with_one_denied_call_is_refused_whole(policy: FakePolicy) -> None:
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    await ex.on_request_headers(_request(session=bind("s", ALICE, KEY, SCOPE)))
    reply = await ex.on_request_body(_body([_call("echo", 1, text="a"), _call("add", 2, a=1)]))
    assert _status(reply) == 403
    errors = json.loads(reply.immediate_response.body)
    assert [e["id"] for e in errors] == [1, 2] and all(e["error"]["code"] == -32003 for e in errors)
    decisions = [(e.rule, e.allowed) for e in sink.events if e.type == "policy.decision"]  # type: ignore[attr-defined]
    assert decisions == [("echo", True), ("default-deny", False)]


@pytest.mark.parametrize("sse", [False, True], ids=["json", "sse"])
async def test_list_responses_are_filtered_for_the_caller(policy: FakePolicy, sse: bool) -> None:
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    await ex.on_request_headers(_request(session=bind("s", ALICE, KEY, SCOPE)))
    await ex.on_request_body(_body({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}))
    kind = "text/event-stream" if sse else "application/json"
    reply = await ex.on_response_headers(_headers({":status": "200", "content-type": kind}))
    # BUFFERED: the list is rewritten whole.
    assert reply.mode_override.response_body_mode == processing_mode_pb2.ProcessingMode.BUFFERED
    result = {"jsonrpc": "2.0", "id": 5, "result": {"tools": [{"name": "echo"}, {"name": "add"}]}}
    raw = f"data: {json.dumps(result)}\n\n".encode() if sse else json.dumps(result).encode()
    reply = await ex.on_response_body(_body(raw))
    sent = reply.response_body.response.body_mutation.body
    doc = json.loads(sent.split(b"data: ", 1)[1] if sse else sent)
    assert [t["name"] for t in doc["result"]["tools"]] == ["echo"]
    filtered = [e for e in sink.events if e.type == "policy.list_filtered"]
    assert [f.hidden for f in filtered] == [["add"]]  # type: ignore[attr-defined]
    assert sink.types()[-1] == "exchange.end"


async def test_oversized_json_under_a_policy_is_withheld(policy: FakePolicy) -> None:
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    await ex.on_request_headers(_request(session=bind("s", ALICE, KEY, SCOPE)))
    await ex.on_request_body(_body(_call("echo", text="x")))
    await ex.on_response_headers(_headers({":status": "200", "content-type": "application/json"}))
    secret = b'{"jsonrpc":"2.0","id":1,"result":{"t":"' + b"s" * 4000 + b'"}}'
    await ex.on_response_body(_body(secret[:3000], end=False))
    await ex.on_response_body(_body(secret[3000:]))
    chunks = [e for e in sink.events if e.type == "http.chunk"]
    assert len(chunks) == 2 and all("withheld" in c.body for c in chunks)  # type: ignore[attr-defined]
    assert b"ssss" not in json.dumps([e.to_dict() for e in sink.events]).encode()


async def test_events_are_held_until_the_server_names_the_session(policy: FakePolicy) -> None:
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    await ex.on_request_headers(_request())
    await ex.on_request_body(_body({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}))
    assert sink.events == []  # the unit is not known yet
    reply = await ex.on_response_headers(
        _headers({":status": "200", "content-type": "application/json", "mcp-session-id": "srv-9"})
    )
    assert sink.types() == ["exchange.start", "mcp.request", "policy.decision", "http.response"]
    assert {e.session for e in sink.events} == {"srv-9"}
    bound = {
        h.header.key: h.header.raw_value.decode() for h in reply.response_headers.response.header_mutation.set_headers
    }
    assert bound["mcp-session-id"] == bind("srv-9", ALICE, KEY, SCOPE)  # the client only ever sees the bound id


async def test_fail_closed_when_the_sink_refuses(policy: FakePolicy) -> None:
    sink = FakeSink(takes=False)
    ex = Exchange(_gateway(sink, policy))
    with pytest.raises(StoreError):  # the stream loop aborts the gRPC stream: Envoy fails the request
        await ex.on_request_headers(_request(session=bind("s", ALICE, KEY, SCOPE)))


async def test_held_events_refused_when_the_sink_stops_accepting(policy: FakePolicy) -> None:
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    await ex.on_request_headers(_request())
    sink.accepting = False
    reply = await ex.on_request_body(_body({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}))
    assert _status(reply) == 503  # nothing forwarded that could not be recorded


async def test_recorder_not_accepting_refuses_new_exchanges(policy: FakePolicy) -> None:
    sink = FakeSink(accepting=False)
    reply = await Exchange(_gateway(sink, policy)).on_request_headers(_request())
    assert _status(reply) == 503 and sink.events == []


async def test_not_required_lets_traffic_pass_when_events_are_lost(policy: FakePolicy) -> None:
    sink = FakeSink(takes=False)
    ex = Exchange(_gateway(sink, policy, required=False))
    reply = await ex.on_request_headers(_request(session=bind("s", ALICE, KEY, SCOPE)))
    assert _status(reply) is None


@pytest.mark.parametrize("named", ["audit-2026-12-01", "x-someone", "r-0123-abc", "t-0123-abc"])
async def test_a_server_cannot_name_its_session_like_a_gateway_unit(policy: FakePolicy, named: str) -> None:
    """A malicious server naming its session audit-<day> would write into the auditors' trail."""
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    await ex.on_request_headers(_request())
    await ex.on_request_body(_body({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}))
    reply = await ex.on_response_headers(
        _headers({":status": "200", "content-type": "application/json", "mcp-session-id": named})
    )
    assert _status(reply) == 502
    assert {e.session for e in sink.events} == {"x-ex1"}


async def test_commit_points_the_request_goes_upstream_and_the_answer_ends_only_once_on_disk(
    policy: FakePolicy,
) -> None:
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    await ex.on_request_headers(_request(session=bind("s", ALICE, KEY, SCOPE)))
    assert sink.commits == []  # a POST's headers alone do not go upstream before its body
    reply = await ex.on_request_body(_body(_call("echo", text="x")))
    assert _status(reply) is None
    assert sink.commits == [3]  # start, request and decision were on disk before the body was let through
    await ex.on_response_headers(_headers({":status": "200", "content-type": "application/json"}))
    await ex.on_response_body(_body({"jsonrpc": "2.0", "id": 1, "result": {}}))
    assert sink.commits[-1] == len(sink.events) and sink.types()[-1] == "exchange.end"


async def test_a_request_whose_events_cannot_be_written_is_refused_not_forwarded(policy: FakePolicy) -> None:
    sink = FakeSink(write_error=StoreError("spool failing"))
    ex = Exchange(_gateway(sink, policy))
    await ex.on_request_headers(_request(session=bind("s", ALICE, KEY, SCOPE)))
    reply = await ex.on_request_body(_body(_call("echo", text="x")))
    assert _status(reply) == 503
    assert sink.types()[-1] == "exchange.end"


async def test_an_answer_whose_events_cannot_be_written_fails_the_stream(policy: FakePolicy) -> None:
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    await ex.on_request_headers(_request(session=bind("s", ALICE, KEY, SCOPE)))
    await ex.on_request_body(_body(_call("echo", text="x")))
    await ex.on_response_headers(_headers({":status": "200", "content-type": "text/event-stream"}))
    sink.write_error = StoreError("spool failing")
    with pytest.raises(StoreError):  # the stream loop aborts: Envoy fails the response, the client sees no more
        await ex.on_response_body(_body(b'data: {"jsonrpc":"2.0","id":1,"result":{}}\n\n', end=False))
