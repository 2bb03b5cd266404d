"""A small OTLP/HTTP trace receiver for the tests: POST /v1/traces with a protobuf ExportTraceServiceRequest, the
spans decoded (opentelemetry-proto's generated classes) and kept as plain dicts."""

from __future__ import annotations

import gzip
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from extproc.launcher import wait_until


class OtlpReceiver:
    """Every span received, as {name, trace_id, span_id, parent_span_id (hex), kind, attributes, service}.
    ``refuse``: statuses (and their Retry-After, or None) to answer the first requests with, one each, before
    accepting any; ``encodings``: each request's Content-Encoding (a gzip body is decompressed)."""

    def __init__(self, refuse: list[tuple[int, str | None]] | None = None) -> None:
        self.spans: list[dict[str, Any]] = []
        self.bad: list[str] = []
        self.refuse = list(refuse or [])
        self.encodings: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def wait_for(self, name: str, timeout: float = 15.0) -> dict[str, Any]:
        wait_until(lambda: any(s["name"] == name for s in self.spans), timeout, f"span {name!r}")
        return next(s for s in self.spans if s["name"] == name)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.encodings.append(self.headers.get("content-encoding", ""))
                if receiver.refuse:
                    status, retry_after = receiver.refuse.pop(0)
                    self.send_response(status)
                    if retry_after is not None:
                        self.send_header("retry-after", retry_after)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                if self.headers.get("content-encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                    receiver.bad.append(f"{self.path} {self.headers.get('content-type')}")
                    self.send_response(415)
                    self.send_header("content-length", "0")
                    self.end_headers()
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                for rs in request.resource_spans:
                    service = next(
                        (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"), ""
                    )
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            receiver.spans.append(
                                {
                                    "name": span.name,
                                    "trace_id": span.trace_id.hex(),
                                    "span_id": span.span_id.hex(),
                                    "parent_span_id": span.parent_span_id.hex(),
                                    "kind": span.kind,
                                    "start": span.start_time_unix_nano,
                                    "end": span.end_time_unix_nano,
                                    "status": span.status.code,
                                    "attributes": {a.key: _value(a.value) for a in span.attributes},
                                    "service": service,
                                }
                            )
                data = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None
