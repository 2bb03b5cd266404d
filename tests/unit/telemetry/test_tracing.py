"""Spans of an exchange driven through its phases with real ext_proc messages, exported to the SDK's in-memory
exporter: the documented tree, the parent from the client (header or params._meta), the upstream's traceparent."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from threading import current_thread

import pytest
from exchange_fakes import FakePolicy, FakeSink, _body, _call, _gateway, _headers, _request, load_fake_policy
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from otlp_receiver import OtlpReceiver

from extproc.exchange import Exchange
from extproc.recording.events import ExchangeEnd
from extproc.telemetry.config import Telemetry
from extproc.telemetry.otlp import readable
from extproc.telemetry.tracing import Tracing
from extproc.upstream.base import ExchangeEndNaming

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"


@pytest.fixture
def policy(tmp_path: Path) -> FakePolicy:
    return load_fake_policy(tmp_path)


def _traced(policy: FakePolicy) -> tuple[Exchange, FakeSink, InMemorySpanExporter]:
    sink, spans = FakeSink(), InMemorySpanExporter()
    gw = _gateway(sink, policy)
    gw.tracing = Tracing(Telemetry(endpoint="http://127.0.0.1:1/v1/traces"), exporter=spans, batch=False)
    return Exchange(gw), sink, spans


def _request_with(traceparent: str | None) -> object:
    h = {":method": "POST", ":path": "/demo/mcp", ":authority": "gw", "authorization": "Bearer alice"}
    if traceparent:
        h["traceparent"] = traceparent
    return _headers(h)


def _upstream_traceparent(reply) -> str:  # type: ignore[no-untyped-def]
    mutation = reply.request_body.response.header_mutation
    return {h.header.key: h.header.raw_value.decode() for h in mutation.set_headers}["traceparent"]


async def test_allowed_call_has_the_documented_tree_under_the_clients_trace(policy: FakePolicy) -> None:
    ex, sink, spans = _traced(policy)
    await ex.on_request_headers(_request_with(TRACEPARENT))
    reply = await ex.on_request_body(_body(_call("echo", 5, text="hi")))
    await ex.on_response_headers(_headers({":status": "200", "content-type": "application/json"}, end=True))

    finished = {s.name: s for s in spans.get_finished_spans()}
    root = finished["tools/call echo"]
    assert root.kind is SpanKind.SERVER
    assert format(root.context.trace_id, "032x") == CLIENT_TRACE
    assert root.parent is not None and format(root.parent.span_id, "016x") == CLIENT_SPAN
    assert root.attributes["mcp.method.name"] == "tools/call" and root.attributes["gen_ai.tool.name"] == "echo"
    assert root.attributes["jsonrpc.request.id"] == "5" and root.attributes["mcp_extproc.outcome"] == "complete"
    assert root.attributes["mcp_extproc.decision"] == "allow" and root.status.status_code is StatusCode.UNSET
    children = {
        name for name, s in finished.items() if s.parent is not None and s.parent.span_id == root.context.span_id
    }
    assert children == {"authenticate", "policy", "recording commit", "upstream"}
    assert finished["upstream"].kind is SpanKind.CLIENT
    assert all(finished[c].start_time >= root.start_time and finished[c].end_time <= root.end_time for c in children)

    # The server is sent the upstream span as its parent, in the client's trace; the record says so too.
    upstream = finished["upstream"].context
    assert _upstream_traceparent(reply) == f"00-{CLIENT_TRACE}-{upstream.span_id:016x}-01"
    assert "trace.context" not in sink.types()  # the ids are in exchange.end: one event less per exchange
    [end] = [e for e in sink.events if e.type == "exchange.end"]
    assert end.trace == {  # type: ignore[attr-defined]
        "trace_id": CLIENT_TRACE,
        "span_id": f"{root.context.span_id:016x}",
        "parent": "header",
        "upstream_span_id": f"{upstream.span_id:016x}",
    }
    assert end.to_dict()["trace"]["trace_id"] == CLIENT_TRACE


async def test_parent_from_params_meta_traceparent_when_no_header(policy: FakePolicy) -> None:
    ex, sink, spans = _traced(policy)
    call = _call("echo", 1)
    call["params"]["_meta"] = {"traceparent": TRACEPARENT}
    await ex.on_request_headers(_request_with(None))
    reply = await ex.on_request_body(_body(call))
    ex.finish("complete")
    root = next(s for s in spans.get_finished_spans() if s.name == "tools/call echo")
    assert format(root.context.trace_id, "032x") == CLIENT_TRACE
    assert _upstream_traceparent(reply).startswith(f"00-{CLIENT_TRACE}-")
    assert [e.trace["parent"] for e in sink.events if e.type == "exchange.end"] == ["meta"]  # type: ignore[attr-defined]


async def test_without_a_parent_a_new_trace_is_started(policy: FakePolicy) -> None:
    ex, sink, spans = _traced(policy)
    await ex.on_request_headers(_request_with("00-zz-not-valid"))
    reply = await ex.on_request_body(_body(_call("echo", 1)))
    ex.finish("complete")
    root = next(s for s in spans.get_finished_spans() if s.name == "tools/call echo")
    assert root.parent is None and format(root.context.trace_id, "032x") != CLIENT_TRACE
    assert _upstream_traceparent(reply).split("-")[1] == format(root.context.trace_id, "032x")
    assert [e.trace["parent"] for e in sink.events if e.type == "exchange.end"] == ["new"]  # type: ignore[attr-defined]


async def test_denied_call_is_an_error_span_with_no_upstream(policy: FakePolicy) -> None:
    ex, _, spans = _traced(policy)
    await ex.on_request_headers(_request_with(TRACEPARENT))
    await ex.on_request_body(_body(_call("delete_everything", 2)))
    finished = {s.name: s for s in spans.get_finished_spans()}
    root = finished["tools/call delete_everything"]
    assert root.status.status_code is StatusCode.ERROR and root.attributes["mcp_extproc.decision"] == "deny"
    assert root.attributes["error.type"] == "PolicyDenied"
    assert "upstream" not in finished and {"authenticate", "policy"} <= set(finished)


async def test_tracing_off_changes_nothing(policy: FakePolicy) -> None:
    sink = FakeSink()
    ex = Exchange(_gateway(sink, policy))
    await ex.on_request_headers(_request())
    reply = await ex.on_request_body(_body(_call("echo", 1)))
    assert not reply.request_body.response.HasField("header_mutation")
    assert "trace.context" not in sink.types()
    ex.finish("complete")
    assert [type(e) for e in sink.events if e.type == "exchange.end"] == [ExchangeEnd]  # no trace field


def test_export_failures_are_counted(policy: FakePolicy) -> None:
    telemetry = Telemetry(endpoint="http://127.0.0.1:1/v1/traces", timeout_ms=200, retries=2, retry_initial_ms=1)
    tracing = Tracing(telemetry, batch=False)
    trace = tracing.exchange("x", None)
    trace.finish("complete", 200)  # the OTLP exporter cannot reach port 1: tried 3 times, counted, never raised
    assert tracing.errors == 1 and tracing.exported == 0 and tracing._http is not None and tracing._http.retried == 2
    tracing.shutdown()


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_a_busy_collector_is_retried_with_backoff_and_gets_the_spans_gzipped(compression: str) -> None:
    """429 and 503 (OTLP/HTTP's "come back later", Retry-After honoured) are tried again; the batch arrives once,
    with Content-Encoding: gzip when configured; a refusal past the retries is counted, not raised."""
    with OtlpReceiver(refuse=[(503, None), (429, "0")]) as otlp:
        telemetry = Telemetry(endpoint=otlp.endpoint, retries=2, retry_initial_ms=1, compression=compression)
        tracing = Tracing(telemetry, batch=False)
        _one_exchange(tracing)
        assert tracing.exported == 3 and tracing.errors == 0 and tracing._http is not None
        assert tracing._http.retried == 2 and len(otlp.spans) == 3
        assert otlp.encodings == ["gzip" if compression == "gzip" else ""] * 3 and otlp.bad == []
        otlp.refuse = [(503, None)] * 3 + [(400, None)]
        _one_exchange(tracing)  # three 503s: retries spent
        _one_exchange(tracing)  # a 400 is final: not retried
        assert tracing.errors == 2 and tracing._http.retried == 4 and len(otlp.spans) == 3
        tracing.shutdown()


async def test_an_unsampled_exchange_passes_the_clients_traceparent_and_records_nothing(policy: FakePolicy) -> None:
    sink, spans = FakeSink(), InMemorySpanExporter()
    gw = _gateway(sink, policy)
    gw.tracing = Tracing(
        Telemetry(endpoint="http://127.0.0.1:1/v1/traces", sample_ratio=1.0), exporter=spans, batch=False
    )
    ex = Exchange(gw)
    await ex.on_request_headers(_request_with(f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-00"))  # the client did not sample
    reply = await ex.on_request_body(_body(_call("echo", 1)))
    ex.finish("complete")
    assert spans.get_finished_spans() == ()
    assert not reply.request_body.response.HasField("header_mutation")
    assert "trace.context" not in sink.types()
    assert [type(e) for e in sink.events if e.type == "exchange.end"] == [ExchangeEnd]


def test_the_end_of_a_traced_exchange_keeps_every_field_and_the_credential_it_names() -> None:
    tracing = Tracing(Telemetry(endpoint="http://127.0.0.1:1/v1/traces"), exporter=InMemorySpanExporter(), batch=False)
    trace = tracing.exchange("ex-1", TRACEPARENT)
    trace.begin([_call("echo", 1)])  # refused before it went upstream: no upstream span
    plain = ExchangeEnd(session="s", exchange="ex-1", index=4, time=2.0, outcome="denied", status=403, detail="no")
    named = ExchangeEndNaming(**{f.name: getattr(plain, f.name) for f in fields(plain)}, credential={"kind": "k"})
    for end in (plain, named):
        traced = trace.ended(end)
        assert isinstance(traced, type(end)) and traced.type == "exchange.end"
        line = traced.to_dict()
        assert {k: v for k, v in line.items() if k != "trace"} == end.to_dict()
        assert line["trace"] == {
            "trace_id": CLIENT_TRACE, "span_id": f"{trace.span_id:016x}", "parent": "header", "upstream_span_id": "",
        }  # fmt: skip
    tracing.shutdown()


def _one_exchange(tracing: Tracing, traceparent: str | None = TRACEPARENT) -> None:
    trace = tracing.exchange("ex-1", traceparent)
    trace.mark("authenticate", 1)
    trace.forward([_call("echo", 3, text="hi")], "sess", "demo")
    trace.answered(200)
    trace.finish("denied", 403, "deny", "policies/p.yaml:3", "PolicyDenied: no", "sess")


def test_the_otlp_request_is_the_one_the_sdk_encoder_makes_of_the_same_spans() -> None:
    """Spans are encoded straight from their tuples; an OTLP receiver sees what the SDK's encoder would send."""
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    sent: list[bytes] = []
    tracing = Tracing(Telemetry(endpoint="http://127.0.0.1:1/v1/traces"), batch=False, post=sent.append)
    records: list = []
    real_submit = tracing.submit
    tracing.submit = lambda r: (records.extend(r), real_submit(r))  # type: ignore[method-assign]
    _one_exchange(tracing)
    ours = ExportTraceServiceRequest.FromString(sent[0])
    sdk = encode_spans([readable(r, tracing.resource, tracing.scope) for r in records])

    def spans(req: ExportTraceServiceRequest) -> list[dict]:
        [rs] = req.resource_spans
        [ss] = rs.scope_spans
        out = []
        for s in ss.spans:
            d = {f.name: v for f, v in s.ListFields() if f.name not in ("attributes", "status")}
            d["attributes"] = {a.key: a.value for a in s.attributes}
            d["status"] = (s.status.code, s.status.message)
            out.append(d)
        resource = {a.key: a.value for a in rs.resource.attributes}
        return [resource, (ss.scope.name, ss.scope.version), *out]

    assert len(records) == 3 and spans(ours) == spans(sdk)
    assert tracing.exported == 3 and tracing.errors == 0
    # Several exchanges in one request (a new trace: a root without parent; the client's again), as the shipper
    # sends them: what one span shares with the one before (trace id, parent) is written the same way.
    _one_exchange(tracing, None)
    _one_exchange(tracing)
    many = ExportTraceServiceRequest.FromString(tracing.encoder.encode(records))
    assert len(records) == 9 and spans(many) == spans(
        encode_spans([readable(r, tracing.resource, tracing.scope) for r in records])
    )


def test_an_unsampled_exchange_draws_no_span_id_and_keeps_no_phase() -> None:
    sent: list[bytes] = []
    tracing = Tracing(
        Telemetry(endpoint="http://127.0.0.1:1/v1/traces", sample_ratio=0.0), batch=False, post=sent.append
    )
    trace = tracing.exchange("ex-1", None)
    trace.mark("authenticate", 1)
    trace.begin([_call("echo", 1)], "sess", "demo")
    trace.mark("policy", 2)
    assert not trace.sampled and trace.span_id == 0 and trace._children == [] and trace.attributes == {}
    assert trace.forward([_call("echo", 1)], "sess", "demo") == {}
    trace.finish("complete", 200)
    assert sent == [] and len(tracing.queue) == 0


def test_spans_are_shipped_by_one_background_thread_and_a_full_queue_drops_and_counts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from extproc.telemetry import tracing as module

    monkeypatch.setattr(module, "MAX_QUEUED", 4)
    monkeypatch.setattr(module, "INTERVAL_S", 60.0)  # only shutdown ships: the queue fills first
    threads: list[str] = []
    tracing = Tracing(
        Telemetry(endpoint="http://127.0.0.1:1/v1/traces"), post=lambda data: threads.append(current_thread().name)
    )
    _one_exchange(tracing)  # 3 spans queued (the exchange, authenticate, upstream)
    _one_exchange(tracing)  # 3 more would pass the bound: dropped whole, counted
    assert len(tracing.queue) == 3 and tracing.dropped == 3
    tracing.shutdown()
    assert threads == ["mcp-extproc-spans"] and tracing.exported == 3 and len(tracing.queue) == 0
