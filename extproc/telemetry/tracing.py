"""The tracer (OpenTelemetry SDK, OTLP/HTTP exporter in the SDK's batch thread) and one ``ExchangeTrace`` per
exchange; the span tree and its attributes are described in ``extproc/telemetry/__init__.py``.

The exchange span starts when the exchange does but is opened only once its parent is known: the client's
``traceparent`` header is there at the request headers, ``params._meta.traceparent`` only with the body. Phases
are kept as (name, start, end); at the exchange's end every span is built at once as an SDK ``ReadableSpan`` and
handed to the span processor (the SDK's span API costs tens of microseconds a span in Python).
Span export happens in the SDK's thread, never on the event loop; an export that fails is counted
(``mcp_extproc_trace_export_errors_total``) and logged, and costs the exchange nothing.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from extproc import __version__
from extproc.envoy.responses import header_mutation
from extproc.ports import EventSink
from extproc.recording.events import Event
from extproc.telemetry.config import Telemetry

log = logging.getLogger(__name__)

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
        )
        self.processor = BatchSpanProcessor(self.exporter) if batch else SimpleSpanProcessor(self.exporter)
        self.provider.add_span_processor(self.processor)
        self.resource = self.provider.resource
        self.scope = InstrumentationScope("mcp-extproc", __version__)
        self.ids = RandomIdGenerator()
        self.bound = round(config.sample_ratio * (_TRACE_ID_LIMIT + 1))  # TraceIdRatioBased's bound

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
    """The spans of one exchange (see the package docstring for the tree), built when the exchange ends.

    Every span's times are known by then, so each is handed to the span processor whole (an SDK ``ReadableSpan``)
    instead of living through the SDK's span API: the ids are drawn and the sampling decided (parent-based, then
    the trace-id ratio, as ``ParentBased(TraceIdRatioBased)``) when the exchange span opens, because the ids go
    upstream and into the record before the exchange ends."""

    __slots__ = (
        "_children", "_tracing", "attributes", "exchange_id", "header", "name", "opened", "parent", "parent_span",
        "sampled", "span_id", "start_ns", "trace_id", "up_end", "up_start", "up_status", "upstream_id",
    )  # fmt: skip

    def __init__(self, tracing: Tracing, exchange_id: str, header: str | None) -> None:
        self._tracing = tracing
        self.exchange_id = exchange_id
        self.header = header
        self.start_ns = time.time_ns()
        self.opened = False
        self.sampled = False
        self.trace_id = self.span_id = self.parent_span = self.upstream_id = 0
        self.up_start = self.up_end = self.up_status = 0
        self.parent = ""  # header | meta | new
        self.name = "mcp"
        self.attributes: dict[str, Any] = {}
        self._children: list[tuple[str, int, int]] = []

    @property
    def trace_hex(self) -> str:
        return format(self.trace_id, "032x") if self.opened else ""

    def mark(self, name: str, start_ns: int, end_ns: int | None = None) -> None:
        """A phase (authenticate, policy, recording commit) that ran from ``start_ns`` until now."""
        self._children.append((name, start_ns, end_ns if end_ns is not None else time.time_ns()))

    def begin(self, messages: Sequence[Mapping[str, Any]] = (), session: str | None = None, server: str = "") -> None:
        """Open the exchange span under its parent: the header's traceparent, else the first request's
        ``params._meta.traceparent``, else a new trace; draw its ids and decide whether it is sampled."""
        if self.opened:
            return
        self.opened = True
        parent = _parse(self.header)
        self.parent = "header"
        if parent is None:
            parent, self.parent = _parse(_meta(messages)), "meta"
        ids = self._tracing.ids
        if parent is None:
            self.parent, self.trace_id = "new", ids.generate_trace_id()
            self.sampled = self.trace_id & _TRACE_ID_LIMIT < self._tracing.bound
        else:
            self.trace_id, self.parent_span, flags = parent
            self.sampled = bool(flags & 1)
        self.span_id = ids.generate_span_id()
        if not self.sampled:
            return
        self.name, attrs = describe(messages)
        attrs["mcp_extproc.exchange"] = self.exchange_id
        if server:
            attrs["mcp_extproc.server"] = server
        if session:
            attrs["mcp.session.id"] = session
        self.attributes = attrs

    def forward(
        self, messages: Sequence[Mapping[str, Any]], session: str | None, server: str, log_: EventSink | Any
    ) -> dict[str, str]:
        """The request goes upstream now: open the exchange span if needed, start the upstream span, record the
        trace context in the exchange's events (``log_.emit``), and return the headers the server gets."""
        self.begin(messages, session, server)
        if not self.sampled:
            # Not sampled: the request goes on as a proxy that records nothing would pass it, with the client's own
            # traceparent (recorded in exchange.start's headers), and costs no span, no event, no header.
            return {}
        self.upstream_id = self._tracing.ids.generate_span_id()
        self.up_start = time.time_ns()
        log_.emit(
            TraceContext(
                trace_id=format(self.trace_id, "032x"),
                span_id=format(self.span_id, "016x"),
                parent=self.parent,
                upstream_span_id=format(self.upstream_id, "016x"),
            )
        )
        return {TRACEPARENT: f"00-{self.trace_id:032x}-{self.upstream_id:016x}-01"}

    def answered(self, status: int) -> None:
        """The server's response headers arrived: the upstream span ends."""
        if self.upstream_id and not self.up_end:
            self.up_end, self.up_status = time.time_ns(), status

    def finish(
        self, outcome: str, status: int, decision: str = "", rule: str = "", detail: str = "", recording: str = ""
    ) -> None:
        """The exchange ended: its span gets the outcome and the recording unit it is in (the way from the trace to
        the recording), and every span of the exchange goes to the span processor."""
        self.begin()
        if not self.sampled:
            return
        now = time.time_ns()
        attrs = self.attributes
        attrs["mcp_extproc.outcome"] = outcome
        attrs["mcp_extproc.http.status"] = status
        if recording:
            attrs["mcp_extproc.recording"] = recording
        if decision:
            attrs["mcp_extproc.decision"] = decision
            attrs["mcp_extproc.rule"] = rule
        state = _OK
        if outcome != "complete" or status >= 500 or decision == "deny":
            attrs["error.type"] = detail.split(":", 1)[0] or outcome
            state = Status(StatusCode.ERROR, detail[:200] or outcome)
        tracing = self._tracing
        root = SpanContext(self.trace_id, self.span_id, is_remote=False, trace_flags=_SAMPLED)
        parent = SpanContext(self.trace_id, self.parent_span, is_remote=True, trace_flags=_SAMPLED)
        spans = [
            _span(tracing, self.name, root, parent if self.parent_span else None, SpanKind.SERVER,
                  self.start_ns, now, attrs, state),
        ]  # fmt: skip
        ids = tracing.ids
        for name, start, end in self._children:
            ctx = SpanContext(self.trace_id, ids.generate_span_id(), is_remote=False, trace_flags=_SAMPLED)
            spans.append(_span(tracing, name, ctx, root, SpanKind.INTERNAL, start, end, None, _OK))
        if self.upstream_id:
            ctx = SpanContext(self.trace_id, self.upstream_id, is_remote=False, trace_flags=_SAMPLED)
            up_attrs = {"http.response.status_code": self.up_status} if self.up_status else None
            spans.append(_span(tracing, "upstream", ctx, root, SpanKind.CLIENT, self.up_start, self.up_end or now,
                               up_attrs, _OK))  # fmt: skip
        for span in spans:
            tracing.processor.on_end(span)


_TRACE_ID_LIMIT = (1 << 64) - 1
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _parse(traceparent: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C traceparent (version 00, non-zero ids); None otherwise."""
    m = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
    if m is None:
        return None
    trace_id, span_id = int(m[1], 16), int(m[2], 16)
    return (trace_id, span_id, int(m[3], 16)) if trace_id and span_id else None


def _span(
    tracing: Tracing,
    name: str,
    ctx: SpanContext,
    parent: SpanContext | None,
    kind: SpanKind,
    start: int,
    end: int,
    attributes: dict[str, Any] | None,
    status: Status,
) -> ReadableSpan:
    return ReadableSpan(
        name, ctx, parent, tracing.resource, attributes, kind=kind, status=status, start_time=start, end_time=end,
        instrumentation_scope=tracing.scope,
    )  # fmt: skip


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
