"""The clusters of the Envoy bootstrap: the processor's workers, each MCP server, the backends reached by address,
the audit service; each with its transport socket from ``tls.py`` as it is built, and its circuit breakers."""

from __future__ import annotations

from typing import Any

from extproc.envoy.config import Server
from extproc.envoy.fields import UPSTREAM_HEADER, T, is_ip, seconds, socket_address
from extproc.envoy.tls import processor_transport_socket, upstream_transport_socket
from extproc.sections import split_hostport
from extproc.settings import Settings

PROCESSOR_CLUSTER = "mcp_extproc"
PROCESSOR_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"  # gRPC health service name
BACKENDS_CLUSTER = "mcp_backends"
AUDIT_CLUSTER = "mcp_extproc_audit"
_HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"


def processor_addresses(settings: Settings) -> list[dict[str, Any]]:
    """One endpoint per processor worker: Envoy balances streams across its connections to each of them."""
    proc = settings.processor
    endpoints = [proc.endpoint(i) for i in range(proc.workers)]
    if proc.unix_path:
        return [{"pipe": {"path": e.removeprefix("unix:")}} for e in endpoints]
    return [socket_address(*split_hostport(e)) for e in endpoints]


def _cluster(
    name: str,
    addresses: list[dict[str, Any]],
    http2: bool,
    transport_socket: dict[str, Any] | None = None,
    idle_timeout_s: float | None = None,
) -> dict[str, Any]:
    """A cluster over fixed addresses; ``transport_socket`` (from ``tls.py``'s builders) when it speaks TLS."""
    static = all("pipe" in a or is_ip(a["socket_address"]["address"]) for a in addresses)
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STATIC" if static else "STRICT_DNS",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": a}} for a in addresses]}],
        },
    }
    if http2 or idle_timeout_s is not None:
        options: dict[str, Any] = {
            "@type": T + "extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}} if http2 else {"http_protocol_options": {}},
        }
        if idle_timeout_s is not None:
            options["common_http_protocol_options"] = {"idle_timeout": seconds(idle_timeout_s)}
        cluster["typed_extension_protocol_options"] = {_HTTP_OPTIONS: options}
    if transport_socket is not None:
        cluster["transport_socket"] = transport_socket
    return cluster


def server_cluster_name(server: Server) -> str:
    return f"mcp_server_{server.name}"


def server_cluster(server: Server, idle_timeout_s: float) -> dict[str, Any]:
    """The cluster of a server with an ``upstream``: HTTP/1.1, verified TLS when ``tls: true``."""
    assert server.upstream is not None  # servers with backends are reached through BACKENDS_CLUSTER
    host, port = split_hostport(server.upstream)
    return _cluster(
        server_cluster_name(server),
        [socket_address(host, port)],
        http2=False,
        transport_socket=upstream_transport_socket(server),
        idle_timeout_s=idle_timeout_s,
    )


def processor_cluster(settings: Settings) -> dict[str, Any]:
    """The processor's workers over HTTP/2, health-checked; mutual TLS when ``processor.tls`` is set."""
    cluster = _cluster(
        PROCESSOR_CLUSTER,
        processor_addresses(settings),
        http2=True,
        transport_socket=processor_transport_socket(settings),
    )
    cluster["health_checks"] = [_processor_health_check()]
    return cluster


def backends_cluster(idle_timeout_s: float) -> dict[str, Any]:
    """One cluster for every backend reached by address: the processor names the IP:port per request."""
    return {
        "name": BACKENDS_CLUSTER,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "2s",
        "original_dst_lb_config": {"use_http_header": True, "http_header_name": UPSTREAM_HEADER},
        "typed_extension_protocol_options": {
            _HTTP_OPTIONS: {
                "@type": T + "extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http_protocol_options": {}},
                "common_http_protocol_options": {"idle_timeout": seconds(idle_timeout_s)},
            }
        },
    }


def _circuit_breakers(n: int) -> dict[str, Any]:
    """Envoy's default (1,024 requests per cluster) would refuse the 1,025th open SSE stream with a 503."""
    limits = {"max_connections": n, "max_pending_requests": n, "max_requests": n, "max_retries": 3}
    return {"thresholds": [{"priority": "DEFAULT", **limits}]}


def _processor_health_check() -> dict[str, Any]:
    """gRPC health of each worker: a worker that died leaves the rotation at once, and comes back when serving."""
    return {
        "timeout": "1s",
        "interval": "1s",
        "no_traffic_interval": "1s",
        "unhealthy_threshold": 1,
        "healthy_threshold": 1,
        "grpc_health_check": {"service_name": PROCESSOR_SERVICE},
    }


def audit_cluster(address: str, port: int) -> dict[str, Any]:
    """The audit service, over HTTP/1.1 on its own address."""
    return _cluster(AUDIT_CLUSTER, [socket_address(address, port)], http2=False)


def clusters(settings: Settings) -> list[dict[str, Any]]:
    """Every cluster of the bootstrap but the stats listener's, circuit breakers set."""
    processor = processor_cluster(settings)
    idle = settings.edge.upstream_idle_timeout_s
    out = [processor, backends_cluster(idle)]
    if settings.audit is not None:
        out.append(audit_cluster(settings.audit.address, settings.audit.port))
    # Servers with backends are reached through BACKENDS_CLUSTER.
    out += [server_cluster(s, idle) for s in settings.servers if s.upstream is not None]
    # Every exchange holds one ext_proc stream for its whole life, also while it waits for a connection to its
    # server: the processor carries every server's open and waiting requests (N each), so an overflow is always
    # the server cluster's 503, never a processor failure (500) that would also refuse other servers' requests.
    streams = settings.limits.max_concurrent_streams
    processor_streams = 2 * streams * max(1, len(settings.servers))  # discovered servers: at least one's worth
    for c in out:
        c["circuit_breakers"] = _circuit_breakers(processor_streams if c is processor else streams)
    return out
