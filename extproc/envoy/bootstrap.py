"""Render the Envoy bootstrap for a gateway.yaml: one listener, one route per MCP server, the ext_proc filter.

A plain dict template keeps every Envoy field visible in one place; `envoy --mode validate` checks the result
in the test suite, so a typo here fails CI rather than a deploy.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import yaml

from extproc.settings import Server, Settings, split_hostport

_T = "type.googleapis.com/envoy."
PROCESSOR_CLUSTER = "mcp_extproc"


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def processor_addresses(settings: Settings) -> list[dict[str, Any]]:
    """One endpoint per processor worker: Envoy balances streams across its connections to each of them."""
    proc = settings.processor
    if proc.unix_path:
        paths = [proc.unix_path] if proc.workers == 1 else [f"{proc.unix_path}.{i}" for i in range(proc.workers)]
        return [{"pipe": {"path": p}} for p in paths]
    host, port = split_hostport(proc.address)
    return [_socket(host, port + i) for i in range(proc.workers)]


def _cluster(name: str, addresses: list[dict[str, Any]], http2: bool, tls_sni: str | None = None) -> dict[str, Any]:
    is_ip = all("pipe" in a or _is_ip(a["socket_address"]["address"]) for a in addresses)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if is_ip else "STRICT_DNS",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": a}} for a in addresses]}],
        },
    }
    if http2:
        cluster["typed_extension_protocol_options"] = {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _T + "extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        }
    if tls_sni is not None:
        cluster["transport_socket"] = {
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": _T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "sni": tls_sni,
            },
        }
    return cluster


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def server_cluster_name(server: Server) -> str:
    return f"mcp_server_{server.name}"


def _route(server: Server) -> dict[str, Any]:
    # path_separated_prefix matches /<name>/mcp and /<name>/mcp/..., not /<name>/mcpx.
    return {
        "name": server.name,
        "match": {"path_separated_prefix": server.prefix},
        "route": {
            "cluster": server_cluster_name(server),
            "prefix_rewrite": server.path,
            "timeout": "0s",  # SSE streams live as long as the session; idle timeout still applies
        },
    }


def _ext_proc_filter(settings: Settings) -> dict[str, Any]:
    timeout_ms = settings.processor.message_timeout_ms
    return {
        "name": "envoy.filters.http.ext_proc",
        "typed_config": {
            "@type": _T + "extensions.filters.http.ext_proc.v3.ExternalProcessor",
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


AUDIT_CLUSTER = "mcp_extproc_audit"


def audit_parts(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The audit service's route and cluster. ext_proc is off on that route: auditors' traffic is not MCP traffic
    and is never recorded as such (the audit service keeps its own trail)."""
    audit = settings.audit
    if audit is None:
        return [], []
    route = {
        "name": "audit",
        "match": {"path_separated_prefix": audit.prefix.rstrip("/")},
        "route": {"cluster": AUDIT_CLUSTER, "timeout": "0s"},  # replay streams last as long as the playback
        "typed_per_filter_config": {
            "envoy.filters.http.ext_proc": {
                "@type": _T + "extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
                "disabled": True,
            }
        },
    }
    return [route], [_cluster(AUDIT_CLUSTER, [_socket(audit.address, audit.port)], http2=False)]


def render(settings: Settings) -> dict[str, Any]:
    """The Envoy bootstrap for ``settings`` as a plain dict."""
    limit = settings.limits.max_request_body_bytes
    audit_routes, audit_clusters = audit_parts(settings)
    routes = [*audit_routes, *(_route(s) for s in settings.servers)]
    routes.append(
        {
            "name": "not_found",
            "match": {"prefix": "/"},
            "direct_response": {"status": 404, "body": {"inline_string": '{"error":"no MCP server at this path"}'}},
        }
    )
    hcm = {
        "@type": _T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "mcp",
        "codec_type": "AUTO",
        "use_remote_address": True,
        "route_config": {"name": "mcp", "virtual_hosts": [{"name": "mcp", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            _ext_proc_filter(settings),
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": _T + "extensions.filters.http.router.v3.Router"},
            },
        ],
        "local_reply_config": _local_replies(),
    }
    clusters = [_cluster(PROCESSOR_CLUSTER, processor_addresses(settings), http2=True), *audit_clusters]
    for s in settings.servers:
        host, port = split_hostport(s.upstream)
        clusters.append(
            _cluster(server_cluster_name(s), [_socket(host, port)], http2=False, tls_sni=host if s.tls else None)
        )
    return {
        "admin": {"address": _socket("127.0.0.1", settings.admin.port)},  # loopback only, never exposed
        "static_resources": {
            "listeners": [
                {
                    "name": "mcp",
                    "address": _socket(settings.listen.address, settings.listen.port),
                    # The request body is buffered for the processor; over this Envoy answers 413 itself.
                    "per_connection_buffer_limit_bytes": limit,
                    "filter_chains": [
                        {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
                    ],
                }
            ],
            "clusters": clusters,
        },
    }


def render_yaml(settings: Settings) -> str:
    """The bootstrap as YAML, with a header saying where it came from."""
    head = "# Rendered by `mcp-extproc envoy-config`; edit gateway.yaml instead of this file.\n"
    return head + yaml.safe_dump(render(settings), sort_keys=False, width=120)
