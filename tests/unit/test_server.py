"""The stream loop: one exchange per stream; a stream that ends early records a reset, a failure aborts."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
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
from extproc.server import PassThrough, Processor


class Aborted(Exception):
    pass


class Context:
    """The bits of grpc.aio's ServicerContext the loop uses: read() hands out Envoy's messages then EOF, write()
    collects the replies (``on_write`` sees the state when each is handed over)."""

    def __init__(self, *messages: ep.ProcessingRequest, on_write: Callable[[], None] | None = None) -> None:
        self.messages = list(messages)
        self.replies: list[ep.ProcessingResponse] = []
        self.aborted: tuple[grpc.StatusCode, str] | None = None
        self.on_write = on_write

    async def read(self) -> object:
        return self.messages.pop(0) if self.messages else grpc.aio.EOF

    async def write(self, reply: ep.ProcessingResponse) -> None:
        if self.on_write is not None:
            self.on_write()
        self.replies.append(reply)

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)  # grpc.aio's abort never returns either


@pytest.fixture
def policy(tmp_path: Path) -> FakePolicy:
    return load_fake_policy(tmp_path)


def test_the_stream_loops_are_coroutines_on_grpc_aio_reader_writer_api() -> None:
    # grpc.aio runs an async generator handler through two more async generators per message (request iterator,
    # replies): the reader-writer API costs less per message (bench/README.md, "Transport and latency (s8)")
    for servicer in (Processor, PassThrough):
        assert inspect.iscoroutinefunction(servicer.Process), servicer
        assert not inspect.isasyncgenfunction(servicer.Process), servicer


async def test_the_passthrough_answers_continue_to_every_phase() -> None:
    ctx = Context(
        ep.ProcessingRequest(request_headers=_request()),
        ep.ProcessingRequest(request_body=_body({"jsonrpc": "2.0", "id": 1, "method": "ping"})),
        ep.ProcessingRequest(response_headers=_headers({":status": "200"})),
        ep.ProcessingRequest(response_body=ep.HttpBody(body=b"{}", end_of_stream=True)),
        ep.ProcessingRequest(response_trailers=ep.HttpTrailers()),
    )
    await PassThrough().Process(None, ctx)  # type: ignore[arg-type]
    phases = ["request_headers", "request_body", "response_headers", "response_body", "response_trailers"]
    assert [r.WhichOneof("response") for r in ctx.replies] == phases
    assert all(not r.HasField("immediate_response") for r in ctx.replies)


async def test_a_stream_that_ends_before_the_exchange_records_a_reset(policy: FakePolicy) -> None:
    sink = FakeSink()
    loop = Processor(_gateway(sink, policy))
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {}}
    ctx = Context(
        ep.ProcessingRequest(request_headers=_request()),
        ep.ProcessingRequest(request_body=_body(init)),
    )
    await loop.Process(None, ctx)  # type: ignore[arg-type]
    assert [r.WhichOneof("response") for r in ctx.replies] == ["request_headers", "request_body"]
    end = sink.events[-1]
    assert end.type == "exchange.end" and end.outcome == "reset"  # type: ignore[attr-defined]


async def test_an_internal_error_aborts_the_stream_never_a_clean_close(policy: FakePolicy) -> None:
    sink = FakeSink(takes=False)  # the recorder refuses: recording is required, so the exchange must fail
    ctx = Context(ep.ProcessingRequest(request_headers=_request(session=bind("s", ALICE, KEY, SCOPE))))
    loop = Processor(_gateway(sink, policy))
    with pytest.raises(Aborted):
        await loop.Process(None, ctx)  # type: ignore[arg-type]
    assert ctx.aborted is not None and ctx.aborted[0] == grpc.StatusCode.INTERNAL
    assert ctx.replies == []  # nothing was answered before the abort


async def test_a_complete_exchange_closes_cleanly(policy: FakePolicy) -> None:
    sink = FakeSink()
    loop = Processor(_gateway(sink, policy))
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    result = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"tools": []}}).encode()
    ctx = Context(
        ep.ProcessingRequest(request_headers=_request(session=bind("s", ALICE, KEY, SCOPE))),
        ep.ProcessingRequest(request_body=_body(call)),
        ep.ProcessingRequest(response_headers=_headers({":status": "200", "content-type": "application/json"})),
        ep.ProcessingRequest(response_body=ep.HttpBody(body=result, end_of_stream=True)),
    )
    await loop.Process(None, ctx)  # type: ignore[arg-type]
    assert len(ctx.replies) == 4 and ctx.aborted is None
    assert [e.type for e in sink.events][-1] == "exchange.end"
    assert sink.events[-1].outcome == "complete"  # type: ignore[attr-defined]


async def test_a_refusal_is_on_disk_before_its_answer_goes(policy: FakePolicy) -> None:
    sink = FakeSink()
    loop = Processor(_gateway(sink, policy))
    denied = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add", "arguments": {}}}
    committed_at_write: list[bool] = []
    ctx = Context(
        ep.ProcessingRequest(request_headers=_request(session=bind("s", ALICE, KEY, SCOPE))),
        ep.ProcessingRequest(request_body=_body(denied)),  # no rule allows add: denied by default
        on_write=lambda: committed_at_write.append(bool(sink.commits) and sink.commits[-1] == len(sink.events)),
    )
    await loop.Process(None, ctx)  # type: ignore[arg-type]
    reply = ctx.replies[1]
    assert reply.immediate_response.status.code == 403
    assert committed_at_write[1]  # when the answer was handed over, its record was committed
    assert sink.types()[-2:] == ["policy.decision", "exchange.end"]
