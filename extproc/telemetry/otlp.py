"""Spans as OTLP: one ``ExportTraceServiceRequest`` encoded from plain span tuples, and its POST (OTLP/HTTP protobuf).

Used by the shipper thread of ``extproc/telemetry/tracing.py``; ``tests/unit/telemetry`` holds the bytes equal to
the OpenTelemetry SDK's own encoder for the same spans."""

from __future__ import annotations

import gzip
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any

import httpx
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

# (trace id, span id, parent span id or 0, name, kind, start ns, end ns, attributes or None, error message or None)
SpanRecord = tuple[int, int, int, str, int, int, int, dict[str, Any] | None, str | None]
# OTLP's Span.SpanKind numbers (opentelemetry/proto/trace/v1/trace.proto). Not imported from opentelemetry-proto:
# xds-protos ships an older copy of those modules that may own the files, and the hot path must import regardless.
INTERNAL, SERVER, CLIENT = 1, 2, 3


class OtlpEncoder:
    """Span records -> one serialized OTLP ``ExportTraceServiceRequest``, written as protobuf wire format straight
    from the tuples (building the generated messages field by field cost more than the rest of tracing). The
    resource and scope are encoded once; an attribute's bytes are kept for the next span with the same key and
    value (method, server, tool, outcome repeat). ``tests/unit/telemetry`` holds it equal to the SDK's encoder."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self._cache: dict[tuple[int, str, type, Any], bytes] = {}
        resource_pb = b"".join(_ld(1, self._kv(k, v)) for k, v in resource.attributes.items())
        scope_pb = _ld(1, scope.name.encode()) + _ld(2, (scope.version or "").encode())
        self._head = (_ld(1, resource_pb), _ld(1, scope_pb))

    def encode(self, records: Sequence[SpanRecord]) -> bytes:
        field, times = self._field, _TIMES.pack
        spans = []
        last_trace = last_parent = -1
        trace_pb = parent_pb = b""
        for trace_id, span_id, parent, name, kind, start, end, attrs, error in records:
            if trace_id != last_trace:  # an exchange's spans come together: its trace id is written once
                last_trace, trace_pb = trace_id, b"\x0a\x10" + trace_id.to_bytes(16, "big")
            if parent != last_parent:  # and its children share their parent, the exchange span
                last_parent, parent_pb = parent, b"\x22\x08" + parent.to_bytes(8, "big") if parent else b""
            parts = [
                trace_pb, b"\x12\x08", span_id.to_bytes(8, "big"), parent_pb, field(5, name), _KIND[kind],
                times(0x39, start, 0x41, end),
            ]  # fmt: skip
            if attrs:
                parts += [field(9, k, v) for k, v in attrs.items()]
            if error is not None:
                parts.append(_ld(15, _ld(2, error.encode()) + b"\x18\x02"))  # message, STATUS_CODE_ERROR
            parts.append(b"\x85\x01\x00\x03\x00\x00" if kind == SERVER and parent else b"\x85\x01\x00\x01\x00\x00")
            body = b"".join(parts)  # flags (fixed32) above: whether the parent is remote, as the SDK sets them
            spans.append(b"\x12" + _varint(len(body)) + body)
        resource, scope = self._head
        return _ld(1, resource + _ld(2, scope + b"".join(spans)))

    def _field(self, number: int, key: str, value: Any = None) -> bytes:
        """Field ``number`` of a span: its name (a string), or one attribute (a ``KeyValue``); kept, because the
        same name or attribute repeats on most spans."""
        ck = (number, key, type(value), value)
        out = self._cache.get(ck)
        if out is None:
            out = _ld(number, self._kv(key, value) if number == 9 else key.encode())
            if len(self._cache) >= 4096:  # exchange ids never repeat: start over rather than grow
                self._cache.clear()
            self._cache[ck] = out
        return out

    @staticmethod
    def _kv(key: str, value: Any) -> bytes:
        if isinstance(value, bool):
            any_value = b"\x10\x01" if value else b"\x10\x00"
        elif isinstance(value, int):
            any_value = b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)  # int64: two's complement
        elif isinstance(value, float):
            any_value = b"\x21" + _DOUBLE.pack(value)
        else:
            any_value = _ld(1, str(value).encode())
        return _ld(1, key.encode()) + _ld(2, any_value)


_SDK_KIND = {SERVER: SpanKind.SERVER, INTERNAL: SpanKind.INTERNAL, CLIENT: SpanKind.CLIENT}
_SAMPLED = TraceFlags(TraceFlags.SAMPLED)
_OK = Status(StatusCode.UNSET)


def readable(record: SpanRecord, resource: Resource, scope: InstrumentationScope) -> ReadableSpan:
    """A span record as the SDK's ``ReadableSpan`` (for an SDK span exporter: the tests' in-memory one)."""
    trace_id, span_id, parent, name, kind, start, end, attrs, error = record
    ctx = SpanContext(trace_id, span_id, is_remote=False, trace_flags=_SAMPLED)
    parent_ctx = None
    if parent:
        parent_ctx = SpanContext(trace_id, parent, is_remote=kind == SERVER, trace_flags=_SAMPLED)
    status = Status(StatusCode.ERROR, error) if error is not None else _OK
    return ReadableSpan(
        name, ctx, parent_ctx, resource, attrs, kind=_SDK_KIND[kind], status=status, start_time=start,
        end_time=end, instrumentation_scope=scope,
    )  # fmt: skip


_DOUBLE = struct.Struct("<d")
_TIMES = struct.Struct("<BQBQ")  # start (field 7) and end (field 8) time, fixed64 each, with their tags
_KIND = {k: bytes((0x30, k)) for k in (INTERNAL, SERVER, CLIENT)}  # field 6, a one-byte varint


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (numbers below 16: a one-byte tag)."""
    return _TAGS[field] + _varint(len(payload)) + payload


_TAGS = [bytes(((n << 3) | 2,)) for n in range(16)]


RETRYABLE = frozenset({429, 502, 503, 504})  # OTLP/HTTP: the collector asks the client to come back later
MAX_RETRY_AFTER_S = 30.0


class OtlpHttpPost:
    """POST one encoded request to the OTLP/HTTP endpoint, gzipped when ``compress`` (``Content-Encoding: gzip``,
    which OTLP/HTTP servers must accept); raises on failure (the shipper counts it).

    A 429, 502, 503 or 504 and a connection failure are retried up to ``retries`` times, after ``backoff_s``
    doubling each time (a ``Retry-After`` in seconds replaces it, up to 30 s), as the OTLP/HTTP spec asks; any other
    status is final. ``wait(seconds)`` sleeps between tries and returns True when the process is stopping (the
    shipper's stop event): the batch is then given up at once."""

    def __init__(
        self,
        endpoint: str,
        timeout_s: float,
        retries: int = 3,
        backoff_s: float = 0.5,
        compress: bool = False,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.retries, self.backoff_s, self.compress = retries, backoff_s, compress
        self.retried = 0  # tries repeated (each after a wait)
        self._wait = wait or threading.Event().wait
        self._headers = {"content-type": "application/x-protobuf"}
        if compress:
            self._headers["content-encoding"] = "gzip"
        self._client = httpx.Client(timeout=timeout_s)

    def __call__(self, data: bytes) -> None:
        body = gzip.compress(data, compresslevel=1) if self.compress else data  # level 1: most of the saving
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                r = self._client.post(self.endpoint, content=body, headers=self._headers)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
                wait = delay
            else:
                if r.status_code // 100 == 2:
                    return
                if r.status_code not in RETRYABLE or attempt == self.retries:
                    raise httpx.HTTPStatusError(
                        f"HTTP {r.status_code} from {self.endpoint}", request=r.request, response=r
                    )
                wait = _retry_after(r.headers.get("retry-after"), delay)
            self.retried += 1
            if self._wait(wait):
                raise RuntimeError(f"stopping: gave up a span batch for {self.endpoint} after {attempt + 1} tries")
            delay *= 2

    def close(self) -> None:
        self._client.close()


def _retry_after(value: str | None, default: float) -> float:
    """A ``Retry-After`` of delay seconds (an HTTP date is not worth parsing here: the default backoff then)."""
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S) if value else default
    except ValueError:
        return default
