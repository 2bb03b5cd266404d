"""Envoy's own metrics for Prometheus: a listener that serves only ``/stats/prometheus`` from the admin interface.

The admin interface stays on 127.0.0.1 (it can drain listeners and dump config); Prometheus reaches Envoy's
stats through this listener alone, on ``admin.stats_port`` when set. Everything else on it is 404.
"""

from __future__ import annotations

from typing import Any

from extproc.envoy.fields import T, socket_address
from extproc.settings import Settings

ADMIN_CLUSTER = "envoy_admin"


def stats_parts(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The stats listener and the admin cluster when ``admin.stats_port`` is set (else none of either)."""
    port = settings.admin.stats_port
    if port is None:
        return [], []
    route = {"match": {"path": "/stats/prometheus"}, "route": {"cluster": ADMIN_CLUSTER}}
    hcm = {
        "@type": T + "extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "envoy_stats",
        "route_config": {
            "name": "envoy_stats",
            "virtual_hosts": [
                {
                    "name": "stats",
                    "domains": ["*"],
                    "routes": [route, {"match": {"prefix": "/"}, "direct_response": {"status": 404}}],
                }
            ],
        },
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": T + "extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    listener = {
        "name": "envoy_stats",
        "address": socket_address(settings.listen.address, port),
        "filter_chains": [
            {"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]}
        ],
    }
    admin = socket_address("127.0.0.1", settings.admin.port)
    cluster = {
        "name": ADMIN_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": ADMIN_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": admin}}]}],
        },
    }
    return [listener], [cluster]
