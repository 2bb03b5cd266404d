"""Huge SSE events from a hostile server: memory per exchange and per worker stays bounded, the bytes stream on to
the client as they come, and the recording keeps a withheld marker (size and SHA-256) for what was not held."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest
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

from extproc.authn.session_binding import bind
from extproc.exchange import Exchange
from extproc.gateway import Gateway
from extproc.mcp.sse import BUDGET_SPENT, EVENT_TOO_BIG, HoldBudget

SSE = {":status": "200", "content-type": "text/event-stream", "mcp-session-id": "s"}
HUGE = (
    b"event: message\nid: 1\ndata: "
    + json.dumps({"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x" * 40_000}}).encode()
    + b"\n\n"
)
RESULT = b'id: 2\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[]}}\n\n'
CHUNK = 1000


@pytest.fixture
def policy(tmp_path: Path) -> FakePolicy:
    return load_fake_policy(tmp_path)


async def _open(gw: Gateway) -> Exchange:
    ex = Exchange(gw)
    await ex.on_request_headers(_request(session=bind("s", ALICE, KEY, SCOPE)))
    await ex.on_request_body(_body(_call("echo", text="hi")))
    reply = await ex.on_response_headers(_headers(SSE))
    assert not reply.HasField("mode_override")  # streamed, not buffered
    return ex


async def test_a_huge_event_streams_on_and_is_recorded_withheld(policy: FakePolicy) -> None:
    sink = FakeSink()
    gw = _gateway(sink, policy)  # recording.max_event_body_bytes: 2048
    ex = await _open(gw)
    stream = HUGE + RESULT
    for i in range(0, len(stream), CHUNK):
        reply = await ex.on_response_body(_body(stream[i : i + CHUNK], end=i + CHUNK >= len(stream)))
        # Every chunk goes on to the client as the server sent it: nothing held back, nothing replaced.
        assert not reply.response_body.response.HasField("body_mutation")
        assert gw.options.held.held <= 2048 + CHUNK  # never the whole event
    assert gw.options.held.held == 0
    responses = [e for e in sink.events if e.type == "mcp.response"]
    withheld, result = responses
    assert withheld.body == {"withheld": EVENT_TOO_BIG, "sha256": hashlib.sha256(HUGE).hexdigest()}  # type: ignore[attr-defined]
    assert (withheld.size, withheld.sse_id, withheld.messages) == (len(HUGE), "1", [])  # type: ignore[attr-defined]
    assert result.messages == [{"jsonrpc": "2.0", "id": 1, "result": {"content": []}}]  # type: ignore[attr-defined]
    assert b"xxxx" not in json.dumps([e.to_dict() for e in sink.events]).encode()
    assert sink.types()[-1] == "exchange.end" and sink.events[-1].outcome == "complete"  # type: ignore[attr-defined]


async def test_many_concurrent_huge_events_stay_within_the_worker_budget(policy: FakePolicy) -> None:
    sink = FakeSink()
    gw = _gateway(sink, policy)
    gw.options = replace(gw.options, max_event_body_bytes=1 << 20, held=HoldBudget(64_000))
    exchanges = [await _open(gw) for _ in range(20)]
    stream = HUGE + RESULT
    peak = 0
    for i in range(0, len(stream), CHUNK):  # the twenty streams interleaved, chunk by chunk
        for ex in exchanges:
            await ex.on_response_body(_body(stream[i : i + CHUNK], end=i + CHUNK >= len(stream)))
            peak = max(peak, gw.options.held.held)
    assert peak <= 64_000
    assert gw.options.held.held == 0
    responses = [e for e in sink.events if e.type == "mcp.response"]
    assert len(responses) == 40  # every event of every exchange recorded
    big = [e for e in responses if e.sse_id == "1"]  # type: ignore[attr-defined]
    parsed = [e for e in big if e.messages]  # type: ignore[attr-defined]
    withheld = [e for e in big if "withheld" in e.body]  # type: ignore[attr-defined]
    assert len(parsed) == 1 and len(withheld) == 19  # one fits the budget whole; the others are not held
    assert {e.body["withheld"] for e in withheld} == {BUDGET_SPENT}  # type: ignore[attr-defined]
    assert {e.body["sha256"] for e in withheld} == {hashlib.sha256(HUGE).hexdigest()}  # type: ignore[attr-defined]


async def test_a_huge_event_in_a_body_that_must_be_rewritten_is_refused(policy: FakePolicy) -> None:
    """A stateless call whose result may carry request state: its SSE events are rewritten (sealed) as they pass.
    One too big to check never reaches the client: it gets a JSON-RPC error instead, and nothing after it."""
    sink = FakeSink()
    gw = _gateway(sink, policy)
    ex = Exchange(gw)
    meta = {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"},
    }
    headers = {":method": "POST", ":path": "/demo/mcp", ":authority": "gw", "content-type": "application/json",
               "authorization": "Bearer alice", "mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call",
               "mcp-name": "echo"}  # fmt: skip
    await ex.on_request_headers(_headers(headers))
    call = _call("echo", text="hi")
    call["params"]["_meta"] = meta
    assert _status(await ex.on_request_body(_body(call))) is None
    await ex.on_response_headers(_headers({":status": "200", "content-type": "text/event-stream"}))
    assert ex._body is not None and ex._body.rewriting
    sent = b""
    note = b'id: 0\ndata: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}\n\n'
    stream = note + HUGE + RESULT
    for i in range(0, len(stream), CHUNK):
        reply = await ex.on_response_body(_body(stream[i : i + CHUNK], end=i + CHUNK >= len(stream)))
        sent += reply.response_body.response.body_mutation.body
    first, error = sent.split(b"\n\n", 1)
    assert first + b"\n\n" == note  # what came before it passed
    assert b"xxxx" not in sent
    doc = json.loads(error.split(b"data: ", 1)[1])
    assert (doc["id"], doc["error"]["code"]) == (1, -32603)  # the call is answered with an error
    assert sent.count(b"data: ") == 2  # the event before it, the error; nothing of the rest
    withheld = [e for e in sink.events if e.type == "mcp.response" and "withheld" in e.body]  # type: ignore[attr-defined]
    assert [e.size for e in withheld] == [len(HUGE)]  # type: ignore[attr-defined]


async def test_an_exchange_cut_mid_event_gives_its_held_bytes_back(policy: FakePolicy) -> None:
    sink = FakeSink()
    gw = _gateway(sink, policy)
    gw.options = replace(gw.options, max_event_body_bytes=1 << 20, held=HoldBudget(1 << 20))
    ex = await _open(gw)
    await ex.on_response_body(_body(HUGE[:30_000], end=False))
    assert gw.options.held.held == 30_000
    ex.finish("reset", "client went away")  # what the stream loop does when the stream dies
    assert gw.options.held.held == 0
    tail = [e for e in sink.events if e.type == "http.chunk"]
    assert [e.size for e in tail] == [30_000]  # type: ignore[attr-defined]  # the unfinished event, recorded
    assert sink.events[-1].outcome == "reset"  # type: ignore[attr-defined]
