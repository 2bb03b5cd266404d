"""OpenTelemetry traces of exchanges (off by default: only with a ``telemetry:`` section naming an endpoint).

config.py   the ``telemetry:`` section of gateway.yaml
tracing.py  sampling, one ``ExchangeTrace`` per exchange, the span shipper thread
otlp.py     span records encoded as one OTLP/HTTP protobuf request, and its POST (retries, gzip)

Span tree of one exchange (attributes follow OpenTelemetry's MCP semantic conventions where they exist: span name
``{mcp.method.name} {target}``, ``mcp.method.name``, ``mcp.session.id``, ``mcp.resource.uri``,
``jsonrpc.request.id``, ``gen_ai.tool.name``, ``gen_ai.prompt.name``, ``error.type``; the gateway's own under
``mcp_extproc.*``: ``exchange``, ``server``, ``outcome``, ``decision``, ``rule``, ``http.status``, ``recording``
(the recording unit: ``sessions show`` / ``verify`` take it)):

    {method} {target}          SERVER  the whole exchange: request headers to the end of the response
      authenticate             INTERNAL admission: the bearer token verified, the session's owner checked
      policy                   INTERNAL every request of the body decided
      recording commit         INTERNAL the request's events on disk before it goes upstream
      upstream                 CLIENT   sent to the MCP server until its response headers; its context is the
                                        ``traceparent`` the server receives

The parent is the client's W3C ``traceparent`` header, else ``params._meta.traceparent`` of the (first) request
(SEP-414), else a new trace. The trace id and span id are recorded in the exchange's ``exchange.end`` (``trace``).
An exchange the sampler leaves out (``sample_ratio``, or a client's unsampled flag) gets no spans, no record field
and no header change: its request goes upstream with the client's own traceparent.
"""
