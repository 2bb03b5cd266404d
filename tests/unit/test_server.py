"""The stream loop: one exchange per stream; a stream that ends early records a reset, a failure aborts."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from exchange_fakes import (
    ALICE,
    KEY,
    SCOPE,
    FakePolicy,
    FakeSink,
    _body,
    _gateway,
    _headers,
    _request,
    load_fake_policy,
)

from extproc.authn.session_binding import bind
from extproc.server import Processor


class Aborted(Exception):
    pass


class Context:
    """The bits of grpc.aio's ServicerContext the loop uses."""

    def __init__(self) -> None:
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)  # grpc.aio's abort never returns either


async def _stream(*messages: ep.ProcessingRequest) -> AsyncIterator[ep.ProcessingRequest]:
    for m in messages:
        yield m


@pytest.fixture
def policy(tmp_path: Path) -> FakePolicy:
    return load_fake_policy(tmp_path)


async def test_a_stream_that_ends_before_the_exchange_records_a_reset(policy: FakePolicy) -> None:
    sink = FakeSink()
    loop = Processor(_gateway(sink, policy))
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}
    replies = [
        r
        async for r in loop.Process(
            _stream(
                ep.ProcessingRequest(request_headers=_request()),
                ep.ProcessingRequest(request_body=_body(init)),
            ),
            Context(),  # type: ignore[arg-type]
        )
    ]
    assert [r.WhichOneof("response") for r in replies] == ["request_headers", "request_body"]
    end = sink.events[-1]
    assert end.type == "exchange.end" and end.outcome == "reset"  # type: ignore[attr-defined]


async def test_an_internal_error_aborts_the_stream_never_a_clean_close(policy: FakePolicy) -> None:
    sink = FakeSink(takes=False)  # the recorder refuses: recording is required, so the exchange must fail
    ctx = Context()
    loop = Processor(_gateway(sink, policy))
    with pytest.raises(Aborted):
        request = ep.ProcessingRequest(request_headers=_request(session=bind("s", ALICE, KEY, SCOPE)))
        async for _ in loop.Process(_stream(request), ctx):  # type: ignore[arg-type]
            pass
    assert ctx.aborted is not None and ctx.aborted[0] == grpc.StatusCode.INTERNAL


async def test_a_complete_exchange_closes_cleanly(policy: FakePolicy) -> None:
    sink = FakeSink()
    loop = Processor(_gateway(sink, policy))
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    result = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}).encode()
    msgs = [
        ep.ProcessingRequest(request_headers=_request(session=bind("s", ALICE, KEY, SCOPE))),
        ep.ProcessingRequest(request_body=_body(call)),
        ep.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "application/json"})),
        ep.ProcessingRequest(response_body=ep.HttpBody(body=result, end_of_stream=True)),
    ]
    replies = [r async for r in loop.Process(_stream(*msgs), Context())]  # type: ignore[arg-type]
    assert len(replies) == 4
    assert [e.type for e in sink.events][-1] == "exchange.end"
    assert sink.events[-1].outcome == "complete"  # type: ignore[attr-defined]


async def test_a_refusal_is_on_disk_before_its_answer_goes(policy: FakePolicy) -> None:
    sink = FakeSink()
    loop = Processor(_gateway(sink, policy))
    denied = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add", "arguments": {}}}
    stream = loop.Process(
        _stream(
            ep.ProcessingRequest(request_headers=_request(session=bind("s", ALICE, KEY, SCOPE))),
            ep.ProcessingRequest(request_body=_body(denied)),  # no rule allows add: denied by default
        ),
        Context(),  # type: ignore[arg-type]
    )
    await anext(stream)
    reply = await anext(stream)
    assert reply.immediate_response.status.code == 403
    assert sink.commits[-1] == len(sink.events)  # when the answer was handed over, its record was committed
    assert sink.types()[-2:] == ["policy.decision", "exchange.end"]
