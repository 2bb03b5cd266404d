"""The tracer (OpenTelemetry SDK, OTLP/HTTP exporter in the SDK's batch thread) and one ``ExchangeTrace`` per
exchange; the span tree and its attributes are described in ``extproc/telemetry/__init__.py``.

The exchange span starts when the exchange does but is opened only once its parent is known: the client's
``traceparent`` header is there at the request headers, ``params._meta.traceparent`` only with the body. Phases
that ran before (authentication) are kept as (name, start, end) and become child spans with their own times once
the exchange span exists. Span export happens in the SDK's thread, never on the event loop; an export that fails
is counted (``mcp_extproc_trace_export_errors_total``) and logged, and costs the exchange nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from extproc import __version__
from extproc.envoy.responses import header_mutation
from extproc.ports import EventSink
from extproc.recording.events import Event
from extproc.telemetry.config import Telemetry

log = logging.getLogger(__name__)

_PROPAGATOR = TraceContextTextMapPropagator()
TRACEPARENT = "traceparent"


@dataclass(slots=True, kw_only=True)
class TraceContext(Event):
    """The exchange's place in a trace: its span, where its parent came from, the span the server was sent."""

    type: ClassVar[str] = "trace.context"
    trace_id: str = ""
    span_id: str = ""
    parent: str = ""  # header (the client's traceparent) | meta (params._meta.traceparent, SEP-414) | new
    upstream_span_id: str = ""  # the parent span the MCP server's traceparent names ("" if nothing went upstream)


class CountingExporter(SpanExporter):
    """The real exporter, with its failures counted for Prometheus (the SDK only logs them)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.exported = 0
        self.errors = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            result = self.inner.export(spans)
        except Exception:
            log.exception("trace export failed")
            result = SpanExportResult.FAILURE
        if result is SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.errors += 1
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class Tracing:
    """A tracer provider of its own (never the process-global one), parent-based ratio sampling."""

    def __init__(self, config: Telemetry, exporter: SpanExporter | None = None, batch: bool = True) -> None:
        self.config = config
        if exporter is None:  # imported here: the OTLP exporter (and its HTTP client) only when tracing is on
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.endpoint, timeout=config.timeout_ms / 1000)
        inner = exporter
        self.exporter = CountingExporter(inner)
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name, "service.version": __version__}),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
        )
        processor = BatchSpanProcessor(self.exporter) if batch else SimpleSpanProcessor(self.exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("mcp-extproc", __version__)

    def exchange(self, exchange_id: str, traceparent: str | None) -> ExchangeTrace:
        """The trace of one exchange, started now; ``traceparent``: the client's header, if any."""
        return ExchangeTrace(self, exchange_id, traceparent)

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self.provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        self.provider.shutdown()

    def collector(self) -> Collector:
        return _Readings(self)


class ExchangeTrace:
    """The spans of one exchange (see the package docstring for the tree)."""

    __slots__ = ("_marks", "_tracing", "exchange_id", "header", "parent", "root", "start_ns", "upstream")

    def __init__(self, tracing: Tracing, exchange_id: str, header: str | None) -> None:
        self._tracing = tracing
        self.exchange_id = exchange_id
        self.header = header
        self.start_ns = time.time_ns()
        self.root: Span | None = None
        self.upstream: Span | None = None
        self.parent = ""
        self._marks: list[tuple[str, int, int]] = []

    @property
    def trace_id(self) -> str:
        return format(self.root.get_span_context().trace_id, "032x") if self.root is not None else ""

    def mark(self, name: str, start_ns: int, end_ns: int | None = None) -> None:
        """A phase (authenticate, policy, recording commit) that ran from ``start_ns`` until now."""
        end = end_ns if end_ns is not None else time.time_ns()
        if self.root is None:
            self._marks.append((name, start_ns, end))
        else:
            self._child(name, start_ns, end)

    def begin(self, messages: Sequence[Mapping[str, Any]] = (), session: str | None = None, server: str = "") -> None:
        """Open the exchange span under its parent: the header's traceparent, else the first request's
        ``params._meta.traceparent``, else a new trace."""
        if self.root is not None:
            return
        parent_tp, self.parent = (self.header, "header") if _valid(self.header) else (_meta(messages), "meta")
        if not _valid(parent_tp):
            parent_tp, self.parent = None, "new"
        ctx = _PROPAGATOR.extract({TRACEPARENT: parent_tp}) if parent_tp else Context()
        name, attrs = describe(messages)
        attrs["mcp_extproc.exchange"] = self.exchange_id
        if server:
            attrs["mcp_extproc.server"] = server
        if session:
            attrs["mcp.session.id"] = session
        tracer = self._tracing.tracer
        self.root = tracer.start_span(
            name, context=ctx, kind=SpanKind.SERVER, attributes=attrs, start_time=self.start_ns
        )
        for mark in self._marks:
            self._child(*mark)
        self._marks.clear()

    def forward(
        self, messages: Sequence[Mapping[str, Any]], session: str | None, server: str, log_: EventSink | Any
    ) -> dict[str, str]:
        """The request goes upstream now: open the exchange span if needed, start the upstream span, record the
        trace context in the exchange's events (``log_.emit``), and return the headers the server gets."""
        self.begin(messages, session, server)
        assert self.root is not None
        if not self.root.is_recording():
            # Not sampled: the request goes on as a proxy that records nothing would pass it, with the client's own
            # traceparent (recorded in exchange.start's headers), and costs no span, no event, no header.
            return {}
        ctx = trace.set_span_in_context(self.root)
        self.upstream = self._tracing.tracer.start_span("upstream", context=ctx, kind=SpanKind.CLIENT)
        up = self.upstream.get_span_context()
        sc = self.root.get_span_context()
        log_.emit(
            TraceContext(
                trace_id=format(sc.trace_id, "032x"),
                span_id=format(sc.span_id, "016x"),
                parent=self.parent,
                upstream_span_id=format(up.span_id, "016x"),
            )
        )
        # W3C traceparent, version 00 (what the propagator's inject writes, without its context plumbing)
        return {TRACEPARENT: f"00-{up.trace_id:032x}-{up.span_id:016x}-{int(up.trace_flags):02x}"}

    def answered(self, status: int) -> None:
        """The server's response headers arrived: the upstream span ends."""
        if self.upstream is not None and self.upstream.is_recording():
            self.upstream.set_attribute("http.response.status_code", status)
            self.upstream.end()

    def finish(
        self, outcome: str, status: int, decision: str = "", rule: str = "", detail: str = "", recording: str = ""
    ) -> None:
        """The exchange ended: its span gets the outcome and the recording unit it is in (the way from the trace to
        the recording), and ends (a refused exchange's span is opened here)."""
        self.begin()
        assert self.root is not None
        if self.upstream is not None and self.upstream.is_recording():
            self.upstream.end()
        root = self.root
        if recording:
            root.set_attribute("mcp_extproc.recording", recording)
        root.set_attribute("mcp_extproc.outcome", outcome)
        root.set_attribute("mcp_extproc.http.status", status)
        if decision:
            root.set_attribute("mcp_extproc.decision", decision)
            root.set_attribute("mcp_extproc.rule", rule)
        if outcome != "complete" or status >= 500 or decision == "deny":
            root.set_attribute("error.type", detail.split(":", 1)[0] or outcome)
            root.set_status(Status(StatusCode.ERROR, detail[:200] or outcome))
        root.end()

    def _child(self, name: str, start_ns: int, end_ns: int) -> None:
        assert self.root is not None
        if not self.root.is_recording():  # not sampled: neither are its children (parent-based), skip the work
            return
        ctx = trace.set_span_in_context(self.root)
        self._tracing.tracer.start_span(name, context=ctx, start_time=start_ns).end(end_time=end_ns)


def with_headers(reply: ep.ProcessingResponse, headers: Mapping[str, str]) -> ep.ProcessingResponse:
    """A buffered request body's reply that also sets ``headers`` on the request (Envoy has not sent the headers
    upstream yet: it waits for the body's answer)."""
    if headers:
        reply.request_body.response.header_mutation.MergeFrom(header_mutation(headers))
    return reply


def describe(messages: Sequence[Mapping[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Span name ``{mcp.method.name} {target}`` and the MCP attributes of the first request of a body."""
    msg = next((m for m in messages if isinstance(m, Mapping) and isinstance(m.get("method"), str)), None)
    if msg is None:
        return "mcp", {}
    method: str = msg["method"]
    attrs: dict[str, Any] = {"mcp.method.name": method, "network.transport": "tcp"}
    if "id" in msg and isinstance(msg["id"], str | int) and not isinstance(msg["id"], bool):
        attrs["jsonrpc.request.id"] = str(msg["id"])
    params = msg.get("params")
    target = ""
    if isinstance(params, Mapping):
        name = params.get("name")
        if method == "tools/call" and isinstance(name, str):
            attrs["gen_ai.tool.name"] = target = name
            attrs["gen_ai.operation.name"] = "execute_tool"
        elif method == "prompts/get" and isinstance(name, str):
            attrs["gen_ai.prompt.name"] = target = name
        elif method == "resources/read" and isinstance(params.get("uri"), str):
            attrs["mcp.resource.uri"] = params["uri"]
    return (f"{method} {target}" if target else method), attrs


def _meta(messages: Sequence[Mapping[str, Any]]) -> str | None:
    for m in messages:
        params = m.get("params") if isinstance(m, Mapping) else None
        meta = params.get("_meta") if isinstance(params, Mapping) else None
        if isinstance(meta, Mapping) and isinstance(meta.get(TRACEPARENT), str):
            return str(meta[TRACEPARENT])
    return None


def _valid(traceparent: str | None) -> bool:
    """A W3C traceparent a propagator would accept (version 00 form, non-zero ids)."""
    if not traceparent:
        return False
    ctx = trace.get_current_span(_PROPAGATOR.extract({TRACEPARENT: traceparent})).get_span_context()
    return ctx.is_valid


class _Readings(Collector):
    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    def collect(self) -> Iterator[CounterMetricFamily]:
        e = self.tracing.exporter
        yield CounterMetricFamily(
            "mcp_extproc_trace_spans_exported", "Spans the OTLP exporter delivered", value=e.exported
        )
        yield CounterMetricFamily(
            "mcp_extproc_trace_export_errors",
            "Span batches the OTLP exporter failed to deliver (dropped)",
            value=e.errors,
        )
