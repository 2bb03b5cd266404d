"""The tracer and one ``ExchangeTrace`` per exchange; the span tree and its attributes are described in
``extproc/telemetry/__init__.py``.

The exchange span starts when the exchange does but is opened only once its parent is known: the client's
``traceparent`` header is there at the request headers, ``params._meta.traceparent`` only with the body. The
sampler is consulted when the span opens, before anything else is built: an exchange it leaves out costs a few
attribute writes and nothing more (no ids kept, no attributes, no spans). Phases are kept as (name, start, end); at
the exchange's end every span of a sampled exchange is one plain tuple (a ``SpanRecord``) appended to the shipper's
queue: no SDK span object, no lock, no context work on the event loop.

The shipper is one thread per process: it takes the queue in batches and encodes each batch as one OTLP
``ExportTraceServiceRequest`` directly from the tuples (the resource and scope encoded once, not hashed per span as
the SDK's encoder does), then POSTs it (OTLP/HTTP protobuf). A span exporter of the SDK (the tests' in-memory one)
gets ``ReadableSpan``s made in that thread instead. The queue is bounded (``MAX_QUEUED`` spans; past it spans are
dropped and counted); an export that fails is counted (``mcp_extproc_trace_export_errors_total``) and logged, and
costs the exchange nothing.
"""

from __future__ import annotations

import logging
import operator
import random
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from extproc import __version__
from extproc.recording.events import ExchangeEnd
from extproc.telemetry.config import Telemetry
from extproc.telemetry.otlp import CLIENT as _CLIENT
from extproc.telemetry.otlp import INTERNAL as _INTERNAL
from extproc.telemetry.otlp import SERVER as _SERVER
from extproc.telemetry.otlp import OtlpEncoder, OtlpHttpPost, SpanRecord, readable
from extproc.upstream.base import ExchangeEndNaming

log = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
MAX_QUEUED = 16_384  # spans waiting for the shipper; past it a span is dropped and counted
BATCH = 2048  # spans per OTLP request
INTERVAL_S = 1.0  # the shipper sends what it has at least this often


@dataclass(slots=True, kw_only=True)
class TracedEnd(ExchangeEnd):
    """``exchange.end`` of a traced exchange: ``trace`` names its place in the trace (``trace_id``, ``span_id``,
    ``parent``: header | meta | new, ``upstream_span_id``: the parent span the MCP server's traceparent names, ""
    if nothing went upstream). Carried here rather than in an event of its own (``trace.context``, still read in
    older records): the spans are shipped only when the exchange ends, so an exchange whose end is never recorded
    has no trace in the backend to link to either."""

    trace: dict[str, str] = field(default_factory=dict)


@dataclass(slots=True, kw_only=True)
class TracedNamingEnd(ExchangeEndNaming):
    """``TracedEnd`` of an exchange that also names its upstream credential (extproc/upstream/base.py)."""

    trace: dict[str, str] = field(default_factory=dict)


class Tracing:
    """Parent-based ratio sampling, span records shipped by one background thread (see the module docstring).

    ``exporter``: an SDK span exporter to hand ``ReadableSpan``s to (the tests' in-memory one) instead of the OTLP
    encoder; ``post``: what sends an encoded request (default: HTTP POST to ``config.endpoint``); ``batch=False``:
    ship each exchange's spans at once, in the caller's thread (unit tests)."""

    def __init__(
        self,
        config: Telemetry,
        exporter: SpanExporter | None = None,
        batch: bool = True,
        post: Callable[[bytes], None] | None = None,
    ) -> None:
        self.config = config
        self.resource = Resource.create({"service.name": config.service_name, "service.version": __version__})
        self.scope = InstrumentationScope("mcp-extproc", __version__)
        self.bound = round(config.sample_ratio * (_TRACE_ID_LIMIT + 1))  # TraceIdRatioBased's bound
        self.span_exporter = exporter
        self.encoder = OtlpEncoder(self.resource, self.scope)
        self._post: Callable[[bytes], None] | None = post
        self._http: OtlpHttpPost | None = None
        self._stopping = threading.Event()  # set at shutdown: the shipper ends, a retry's wait is cut short
        if exporter is None and post is None:
            self._http = OtlpHttpPost(
                config.endpoint or "", config.timeout_ms / 1000, config.retries, config.retry_initial_ms / 1000,
                config.compression == "gzip", self._stopping.wait,
            )  # fmt: skip
            self._post = self._http
        self.exported = 0  # spans delivered
        self.errors = 0  # batches that failed (dropped)
        self.dropped = 0  # spans dropped because the queue was full
        self.queue: deque[SpanRecord] = deque()
        self._batch = batch
        self._wake = threading.Event()
        self._ship_lock = threading.Lock()  # the shipper's, and a flush's: never taken on the exchange path
        self._thread: threading.Thread | None = None
        if batch:
            self._thread = threading.Thread(target=self._run, name="mcp-extproc-spans", daemon=True)
            self._thread.start()

    def exchange(self, exchange_id: str, traceparent: str | None) -> ExchangeTrace:
        """The trace of one exchange, started now; ``traceparent``: the client's header, if any."""
        return ExchangeTrace(self, exchange_id, traceparent)

    def submit(self, records: list[SpanRecord]) -> None:
        """Queue one exchange's spans (the exchange path: a length check and a deque extend, no lock)."""
        if len(self.queue) + len(records) > MAX_QUEUED:
            self.dropped += len(records)
            return
        self.queue.extend(records)
        if not self._batch:
            self._ship()
        elif len(self.queue) >= BATCH and not self._wake.is_set():  # is_set: an attribute read, set: a lock
            self._wake.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(INTERVAL_S)
            self._wake.clear()
            self._ship()
        self._ship()

    def _ship(self) -> None:
        with self._ship_lock:
            while self.queue:
                n = min(len(self.queue), BATCH)
                records = [self.queue.popleft() for _ in range(n)]
                try:
                    self._export(records)
                except Exception as e:
                    self.errors += 1
                    log.warning("trace export of %d spans failed: %s", len(records), e)
                else:
                    self.exported += len(records)

    def _export(self, records: list[SpanRecord]) -> None:
        if self.span_exporter is not None:
            spans = [readable(r, self.resource, self.scope) for r in records]
            if self.span_exporter.export(spans) is not SpanExportResult.SUCCESS:
                raise RuntimeError("the span exporter failed")
            return
        assert self._post is not None
        self._post(self.encoder.encode(records))

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Ship what is queued now (in the caller's thread); True when the queue is empty after it."""
        self._ship()
        return not self.queue

    def shutdown(self) -> None:
        """Ship what is queued, stop the shipper, release the HTTP client."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(self.config.timeout_ms / 1000 * 4 + 5)
            self._thread = None
        self._ship()
        if self._http is not None:
            self._http.close()
        if self.span_exporter is not None:
            self.span_exporter.shutdown()

    def collector(self) -> Collector:
        return _Readings(self)


class ExchangeTrace:
    """The spans of one exchange (see the package docstring for the tree), built when the exchange ends.

    The ids are drawn and the sampling decided (parent-based, then the trace-id ratio, as
    ``ParentBased(TraceIdRatioBased)``) when the exchange span opens, because the ids go upstream before the
    exchange ends (and into its ``exchange.end``); an unsampled exchange draws no span id and builds nothing. Ids
    stay ints until the shipper encodes them; hex is written only for the upstream header and the record."""

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

    def mark(self, name: str, start_ns: int, end_ns: int | None = None) -> None:
        """A phase (authenticate, policy, recording commit) that ran from ``start_ns`` until now."""
        if self.opened and not self.sampled:
            return
        self._children.append((name, start_ns, end_ns if end_ns is not None else time.time_ns()))

    def begin(self, messages: Sequence[Mapping[str, Any]] = (), session: str | None = None, server: str = "") -> None:
        """Open the exchange span under its parent: the header's traceparent, else the first request's
        ``params._meta.traceparent``, else a new trace; decide whether it is sampled, and only then draw its span
        id and describe it."""
        if self.opened:
            return
        self.opened = True
        parent = _parse(self.header)
        self.parent = "header"
        if parent is None:
            parent, self.parent = _parse(_meta(messages)), "meta"
        if parent is None:
            self.parent, self.trace_id = "new", _random_id(128)
            self.sampled = self.trace_id & _TRACE_ID_LIMIT < self._tracing.bound
        else:
            self.trace_id, self.parent_span, flags = parent
            self.sampled = bool(flags & 1)
        if not self.sampled:
            self._children.clear()
            return
        self.span_id = _random_id(64)
        self.name, attrs = describe(messages)
        attrs["mcp_extproc.exchange"] = self.exchange_id
        if server:
            attrs["mcp_extproc.server"] = server
        if session:
            attrs["mcp.session.id"] = session
        self.attributes = attrs

    def forward(self, messages: Sequence[Mapping[str, Any]], session: str | None, server: str) -> dict[str, str]:
        """The request goes upstream now: open the exchange span if needed, start the upstream span, and return the
        headers the server gets (its ids go into the record with the exchange's end: ``ended``)."""
        self.begin(messages, session, server)
        if not self.sampled:
            # Not sampled: the request goes on as a proxy that records nothing would pass it, with the client's own
            # traceparent (recorded in exchange.start's headers), and costs no span, no record field, no header.
            return {}
        self.upstream_id = _random_id(64)
        self.up_start = time.time_ns()
        return {TRACEPARENT: f"00-{self.trace_id:032x}-{self.upstream_id:016x}-01"}

    def ended(self, end: ExchangeEnd) -> ExchangeEnd:
        """``end`` carrying the exchange's trace context when it is sampled (``TracedEnd``), else ``end`` itself."""
        if not self.sampled:
            return end
        trace = {
            "trace_id": f"{self.trace_id:032x}",
            "span_id": f"{self.span_id:016x}",
            "parent": self.parent,
            "upstream_span_id": f"{self.upstream_id:016x}" if self.upstream_id else "",
        }
        if isinstance(end, ExchangeEndNaming):
            return TracedNamingEnd(**dict(zip(_NAMING_FIELDS, _NAMING_VALUES(end), strict=True)), trace=trace)
        return TracedEnd(**dict(zip(_END_FIELDS, _END_VALUES(end), strict=True)), trace=trace)

    def answered(self, status: int) -> None:
        """The server's response headers arrived: the upstream span ends."""
        if self.upstream_id and not self.up_end:
            self.up_end, self.up_status = time.time_ns(), status

    def finish(
        self, outcome: str, status: int, decision: str = "", rule: str = "", detail: str = "", recording: str = ""
    ) -> None:
        """The exchange ended: its span gets the outcome and the recording unit it is in (the way from the trace to
        the recording), and every span of the exchange goes to the shipper's queue as a plain tuple."""
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
        error = None
        if outcome != "complete" or status >= 500 or decision == "deny":
            attrs["error.type"] = detail.split(":", 1)[0] or outcome
            error = detail[:200] or outcome
        trace_id, root, tracing = self.trace_id, self.span_id, self._tracing
        records: list[SpanRecord] = [
            (trace_id, root, self.parent_span, self.name, _SERVER, self.start_ns, now, attrs, error)
        ]
        for name, start, end in self._children:
            records.append((trace_id, _random_id(64), root, name, _INTERNAL, start, end, None, None))
        if self.upstream_id:
            up_attrs = {"http.response.status_code": self.up_status} if self.up_status else None
            records.append(
                (trace_id, self.upstream_id, root, "upstream", _CLIENT, self.up_start, self.up_end or now, up_attrs,
                 None)
            )  # fmt: skip
        tracing.submit(records)


_TRACE_ID_LIMIT = (1 << 64) - 1


def _random_id(bits: int) -> int:
    """A random trace (128 bits) or span (64 bits) id, never 0 (invalid); RandomIdGenerator's draw, inlined."""
    return random.getrandbits(bits) or 1


_END_FIELDS = tuple(f.name for f in fields(ExchangeEnd))
_NAMING_FIELDS = tuple(f.name for f in fields(ExchangeEndNaming))
_END_VALUES, _NAMING_VALUES = operator.attrgetter(*_END_FIELDS), operator.attrgetter(*_NAMING_FIELDS)
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def _parse(traceparent: str | None) -> tuple[int, int, int] | None:
    """(trace id, parent span id, flags) of a W3C traceparent (version 00, non-zero ids); None otherwise."""
    m = _TRACEPARENT.match(traceparent.strip().lower()) if traceparent else None
    if m is None:
        return None
    trace_id, span_id = int(m[1], 16), int(m[2], 16)
    return (trace_id, span_id, int(m[3], 16)) if trace_id and span_id else None


def with_headers(reply: ep.ProcessingResponse, headers: Mapping[str, str]) -> ep.ProcessingResponse:
    """A buffered request body's reply that also sets ``headers`` on the request (Envoy has not sent the headers
    upstream yet: it waits for the body's answer)."""
    if headers:  # written in place: a separate mutation merged in cost more than the span work of the exchange
        mutation = reply.request_body.response.header_mutation
        for k, v in headers.items():
            option = mutation.set_headers.add()
            option.header.key = k
            option.header.raw_value = v.encode()
            option.append_action = _OVERWRITE
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
        t = self.tracing
        yield CounterMetricFamily(
            "mcp_extproc_trace_spans_exported", "Spans the OTLP exporter delivered", value=t.exported
        )
        yield CounterMetricFamily(
            "mcp_extproc_trace_export_errors",
            "Span batches the OTLP exporter failed to deliver (dropped)",
            value=t.errors,
        )
        yield CounterMetricFamily(
            "mcp_extproc_trace_spans_dropped", "Spans dropped because the shipper's queue was full", value=t.dropped
        )
        retried = t._http.retried if t._http is not None else 0
        yield CounterMetricFamily("mcp_extproc_trace_export_retries", "Span batch sends tried again", value=retried)
