"""Render the Envoy bootstrap for a gateway.yaml: one listener, one route per MCP server, the ext_proc filter
(the clusters are built in ``clusters.py``).

A plain dict template keeps every Envoy field visible in one place; `envoy --mode validate` checks the result
in the test suite, so a typo here fails CI rather than a deploy. Each listener's and cluster's transport socket
comes from ``tls.py``'s builders as the listener or cluster is built: one writer per field, no second pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import yaml

from extproc.envoy.access_log import access_logs
from extproc.envoy.clusters import AUDIT_CLUSTER, BACKENDS_CLUSTER, PROCESSOR_CLUSTER, clusters, server_cluster_name
from extproc.envoy.config import Server
from extproc.envoy.fields import UPSTREAM_HEADER, T, seconds, socket_address
from extproc.envoy.stats import stats_parts
from extproc.envoy.tls import SDS_NODE, listener_transport_socket
from extproc.mcp.jsonrpc import TRANSPORT_METHODS
from extproc.settings import Settings

# A request whose upstream connection was reset before any of it was sent (the server closed an idle keep-alive
# connection just as Envoy reused it) is sent once more on a new connection: the server never saw it, so this is
# safe for any method. Anything later is never retried: an MCP call is not idempotent.
SAFE_RETRY = {"retry_on": "reset-before-request", "num_retries": 1}


def _routes(server: Server) -> list[dict[str, Any]]:
    """The exact MCP path (query allowed) with the MCP methods goes upstream; other methods there get 405.

    ``path`` matches the whole path without its query string, after the connection manager normalized it, so
    ``/demo/mcp/``, ``/demo/mcp/x`` and ``/demo/mcp/../x`` never reach the server. The processor refuses the
    same requests first (and records the refusal); these routes hold even if it did not.
    """
    route: dict[str, Any] = {
        "cluster": server_cluster_name(server),
        "prefix_rewrite": server.path,
        "timeout": "0s",  # SSE streams live as long as the session; stream_idle_timeout still applies
        "retry_policy": SAFE_RETRY,
    }
    authority = server.upstream_authority
    if authority is not None:
        route["host_rewrite_literal"] = authority  # the server's own name: its DNS-rebinding check passes
    methods = {"name": ":method", "string_match": {"safe_regex": {"regex": f"^({'|'.join(TRANSPORT_METHODS)})$"}}}
    return [
        {"name": server.name, "match": {"path": server.prefix, "headers": [methods]}, "route": route},
        {
            "name": f"{server.name}_method_not_allowed",
            "match": {"path": server.prefix},
            "direct_response": {"status": 405, "body": {"inline_string": '{"error":"method not allowed"}'}},
            "response_headers_to_add": [{"header": {"key": "allow", "value": ", ".join(TRANSPORT_METHODS)}}],
        },
    ]


def _backends_route() -> dict[str, Any]:
    """Requests the processor sent to a backend by address (scoped backends, discovered servers).

    Matches only when the routing header is present, and Envoy strips any client copy before the processor runs
    (``_strip_routing_header``): only the processor's header, set together with clear_route_cache, selects it.
    """
    return {
        "name": "backends",
        "match": {"prefix": "/", "headers": [{"name": UPSTREAM_HEADER, "present_match": True}]},
        "route": {"cluster": BACKENDS_CLUSTER, "timeout": "0s", "retry_policy": SAFE_RETRY},
    }


def _strip_routing_header() -> dict[str, Any]:
    """Removes the client's copy of the routing header before ext_proc, so a client can never choose a backend."""
    return {
        "name": "envoy.filters.http.header_mutation",
        "typed_config": {
            "@type": T + "extensions.filters.http.header_mutation.v3.HeaderMutation",
            "mutations": {"request_mutations": [{"remove": UPSTREAM_HEADER}]},
        },
    }


def _ext_proc_filter(settings: Settings) -> dict[str, Any]:
    timeout_ms = settings.processor.message_timeout_ms
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": T + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": PROCESSOR_CLUSTER}},
            # Fail closed: if the processor is unreachable or errors, the request fails. Never unrecorded traffic.
            "failure_mode_allow": False,
            "message_timeout": f"{timeout_ms / 1000:.3f}s",
            "allow_mode_override": True,
            "request_attributes": ["source.address"],
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SEND",
                "response_body_mode": "STREAMED",  # SSE events reach the client as they are produced
                "response_trailer_mode": "SKIP",
            },
        },
    }


def _local_replies() -> dict[str, Any]:
    """Envoy's own error replies (body too large, upstream down) as JSON-RPC errors instead of plain text.

    The 503 mapper is narrowed to upstream-failure flags so it never rewrites the processor's immediate
    responses, which carry their own JSON-RPC error (e.g. 503 when the identity provider is unreachable).
    """

    def mapper(status: int, code: int, message: str, flags: list[str] | None = None) -> dict[str, Any]:
        match: dict[str, Any] = {
            "status_code_filter": {
                "comparison": {"op": "EQ", "value": {"default_value": status, "runtime_key": f"mcp_extproc.{status}"}}
            }
        }
        if flags:
            match = {"and_filter": {"filters": [match, {"response_flag_filter": {"flags": flags}}]}}
        error = {"code": code, "message": message, "data": {"envoy": "%LOCAL_REPLY_BODY%"}}
        return {
            "filter": match,
            "body_format_override": {
                "json_format": {"jsonrpc": "2.0", "id": None, "error": error},
                "content_type": "application/json",
            },
        }

    # UF/UH/UO/URX/UC/UT: upstream connect failure, no healthy host, overflow, retries exhausted,
    # connection terminated, upstream timeout. The processor itself never answers 413.
    upstream_down = ["UF", "UH", "UO", "URX", "UC", "UT"]
    return {
        "mappers": [
            mapper(413, -32600, "request body too large"),
            mapper(503, -32603, "MCP server unavailable", upstream_down),
        ]
    }


def _audit_routes(settings: Settings) -> list[dict[str, Any]]:
    """The audit service's route. ext_proc is off on it: auditors' traffic is not MCP traffic and is never
    recorded as such (the audit service keeps its own trail)."""
    audit = settings.audit
    if audit is None:
        return []
    route = {
        "name": "audit",
        "match": {"path_separated_prefix": audit.prefix.rstrip("/")},
        "route": {"cluster": AUDIT_CLUSTER, "timeout": "0s"},  # replay streams last as long as the playback
        "typed_per_filter_config": {
            "envoy.filters.http.ext_proc": {
                "@type": T + "extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "disabled": True,
            }
        },
    }
    return [route]


def _virtual_host(settings: Settings) -> dict[str, Any]:
    routes = [*_audit_routes(settings), *(r for s in settings.servers if s.upstream is not None for r in _routes(s))]
    routes.append(_backends_route())
    routes.append(
        {
            "name": "not_found",
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": '{"error":"no MCP server at this path"}'}},
        }
    )
    return {
        "name": "mcp",
        "domains": ["*"],
        "routes": routes,
        # Applied by the router, after the processor: the server gets identity (uncompressed) bodies the processor
        # can filter and redact, and never an underscore spelling of the identity headers (x_mcp_user is
        # HTTP_X_MCP_USER to a WSGI server, like x-mcp-user). The processor strips x-mcp-user/x-mcp-groups itself
        # before setting them, so they are not listed here (this would remove the gateway's own values).
        "request_headers_to_remove": ["accept-encoding", "x_mcp_user", "x_mcp_groups"],
    }


def _http_filters(settings: Settings) -> list[dict[str, Any]]:
    """Routing-header strip, compressor, ext_proc, router. Response filters run in reverse order: the compressor
    sees what the processor let through, so list filtering and redaction always work on identity bodies."""
    filters = [_strip_routing_header()]
    if settings.edge.compress_responses:
        filters.append(_compressor_filter())
    filters.append(_ext_proc_filter(settings))
    router = {"@type": T + "extensions.filters.http.router.v3.Router"}
    return [*filters, {"name": "envoy.filters.http.router", "typed_config": router}]


def _compressor_filter() -> dict[str, Any]:
    """gzip for clients that accept it, on Envoy's default content types (application/json among them; SSE
    streams are left as they are, so each event reaches the client the moment it is produced)."""
    return {
        "name": "envoy.filters.http.compressor",
        "typed_config": {
            "@type": T + "extensions.filters.http.compressor.v3.Compressor",
            "response_direction_config": {"common_config": {"min_content_length": 256}},
            "compressor_library": {
                "name": "gzip",
                "typed_config": {"@type": T + "extensions.compression.gzip.compressor.v3.Gzip"},
            },
        },
    }


def _edge_hcm(settings: Settings) -> dict[str, Any]:
    """The connection manager's edge-proxy settings (Envoy's edge best practices), from ``edge:``."""
    edge = settings.edge
    return {
        "use_remote_address": edge.use_remote_address,
        "xff_num_trusted_hops": edge.xff_num_trusted_hops,
        # One spelling of every path: what the processor routes and decides on is what the server reads.
        "normalize_path": True,
        "merge_slashes": True,
        "path_with_escaped_slashes_action": "REJECT_REQUEST",
        "stream_idle_timeout": seconds(edge.stream_idle_timeout_s),
        "request_headers_timeout": seconds(edge.request_headers_timeout_s),
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        "http2_protocol_options": {
            "max_concurrent_streams": edge.http2_max_concurrent_streams,
            "initial_stream_window_size": edge.http2_initial_stream_window_bytes,
            "initial_connection_window_size": edge.http2_initial_connection_window_bytes,
        },
    }


def _overload_manager(settings: Settings) -> dict[str, Any]:
    """Shed load before running out: a cap on client connections, and heap limits (shrink, then refuse)."""
    edge = settings.edge
    heap = "envoy.resource_monitors.fixed_heap"
    return {
        "refresh_interval": "0.25s",
        "resource_monitors": [
            {
                "name": heap,
                "typed_config": {
                    "@type": T + "extensions.resource_monitors.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": edge.max_heap_bytes,
                },
            },
            {
                "name": "envoy.resource_monitors.global_downstream_max_connections",
                "typed_config": {
                    "@type": T + "extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": edge.max_downstream_connections,
                },
            },
        ],
        "actions": [
            {"name": "envoy.overload_actions.shrink_heap", "triggers": [_threshold(heap, 0.95)]},
            {"name": "envoy.overload_actions.stop_accepting_requests", "triggers": [_threshold(heap, 0.98)]},
        ],
    }


def _threshold(monitor: str, value: float) -> dict[str, Any]:
    return {"name": monitor, "threshold": {"value": value}}


def render(settings: Settings, sds_dir: Path | None = None) -> dict[str, Any]:
    """The Envoy bootstrap for ``settings`` as a plain dict (TLS SDS files referred to in ``sds_dir``)."""
    limit = settings.limits.max_request_body_bytes
    hcm = {
        "@type": T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "mcp",
        "codec_type": "AUTO",
        **_edge_hcm(settings),
        "route_config": {"name": "mcp", "virtual_hosts": [_virtual_host(settings)]},
        "http_filters": _http_filters(settings),
        "local_reply_config": _local_replies(),
        "access_log": access_logs(settings),
    }
    chain: dict[str, Any] = {
        "filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]
    }
    listener_tls = listener_transport_socket(settings.listen.tls, sds_dir)
    if listener_tls is not None:
        chain["transport_socket"] = listener_tls
    listener = {
        "name": "mcp",
        "address": socket_address(settings.listen.address, settings.listen.port),
        # The request body is buffered for the processor; over this Envoy answers 413 itself.
        "per_connection_buffer_limit_bytes": limit,
        # A port another process already holds is a start-up error, never a silently shared socket.
        "enable_reuse_port": False,
        "filter_chains": [chain],
    }
    stats_listeners, stats_clusters = stats_parts(settings)
    bootstrap: dict[str, Any] = {
        "admin": {"address": socket_address("127.0.0.1", settings.admin.port)},  # loopback only, never exposed
        "overload_manager": _overload_manager(settings),
        "static_resources": {
            "listeners": [listener, *stats_listeners],
            "clusters": [*clusters(settings), *stats_clusters],
        },
    }
    if listener_tls is not None:
        bootstrap["node"] = dict(SDS_NODE)
    return bootstrap


def render_yaml(settings: Settings, sds_dir: Path | None = None) -> str:
    """The bootstrap as YAML, with a header saying where it came from."""
    head = "# Rendered by `mcp-extproc envoy-config`; edit gateway.yaml instead of this file.\n"
    # cast: PyYAML ships no types; safe_dump without a stream returns the document as str.
    return head + cast(str, yaml.safe_dump(render(settings, sds_dir), sort_keys=False, width=120))
