"""The rendered Envoy bootstrap: accepted by the real Envoy binary, and shaped the way the processor relies on."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.envoy.bootstrap import SAFE_RETRY, render, render_yaml
from extproc.envoy.clusters import BACKENDS_CLUSTER, PROCESSOR_CLUSTER, processor_addresses
from extproc.envoy.fields import UPSTREAM_HEADER
from extproc.envoy.process import envoy_binary
from extproc.server import listen_address
from extproc.settings import Settings, parse

ONE_SERVER = [{"name": "weather", "upstream": "127.0.0.1:8000"}]
TWO_SERVERS = [
    {"name": "weather", "upstream": "127.0.0.1:8000", "path": "/"},
    {"name": "github", "upstream": "api.githubcopilot.com:443", "path": "/mcp/readonly", "tls": True},
]

SCOPED = [
    {
        "name": "team",
        "backends": [
            {"name": "a", "upstream": "10.0.0.1:8080", "subjects": {"groups": ["team-a"]}},
            {"name": "b", "upstream": "mcp.team-b.svc:8080", "subjects": {"groups": ["team-b"]}},
        ],
    }
]

CONFIGS = [
    pytest.param({"servers": ONE_SERVER}, id="tcp-processor"),
    pytest.param({"servers": ONE_SERVER, "processor": {"address": "unix:/run/mcp/extproc.sock"}}, id="unix-processor"),
    pytest.param({"servers": ONE_SERVER, "processor": {"address": "127.0.0.1:7000", "workers": 3}}, id="3-workers"),
    pytest.param(
        {"servers": ONE_SERVER, "processor": {"address": "unix:/run/mcp/extproc.sock", "workers": 3}},
        id="3-unix-workers",
    ),
    pytest.param({"servers": TWO_SERVERS, "listen": {"address": "0.0.0.0", "port": 10000}}, id="2-servers-one-tls"),
    pytest.param({"servers": [*ONE_SERVER, *SCOPED]}, id="scoped-backends"),
]


def _settings(doc: dict) -> Settings:
    return parse({"allow_anonymous": True, **doc})


@pytest.mark.parametrize("doc", CONFIGS)
def test_envoy_accepts_rendered_config(doc: dict, tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render_yaml(_settings(doc)))

    proc = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "OK" in proc.stdout


def test_envoy_rejects_a_broken_config(tmp_path: Path) -> None:
    """Guards the test above: validation really checks the file (a misspelt field fails)."""
    cfg = render(_settings({"servers": ONE_SERVER}))
    cfg["static_resources"]["clusters"][0]["conect_timeout"] = "1s"
    path = tmp_path / "envoy.yaml"
    path.write_text(yaml.safe_dump(cfg))

    proc = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode != 0


def test_render_yaml_round_trips_and_says_where_it_came_from() -> None:
    s = _settings({"servers": TWO_SERVERS})
    text = render_yaml(s)

    assert text.startswith("# Rendered by `mcp-extproc envoy-config`")
    assert yaml.safe_load(text) == render(s)


def _hcm(cfg: dict[str, Any]) -> dict[str, Any]:
    (listener,) = cfg["static_resources"]["listeners"]
    (chain,) = listener["filter_chains"]
    (hcm_filter,) = chain["filters"]
    return hcm_filter["typed_config"]


def _ext_proc(cfg: dict[str, Any]) -> dict[str, Any]:
    filters = _hcm(cfg)["http_filters"]
    # The routing-header strip runs before the processor; the compressor before it too, so that on the response
    # path (filters run in reverse) it runs after the processor.
    names = [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.compressor",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]
    assert [f["name"] for f in filters] == names
    return filters[2]["typed_config"]


def _cluster(cfg: dict[str, Any], name: str) -> dict[str, Any]:
    (cluster,) = [c for c in cfg["static_resources"]["clusters"] if c["name"] == name]
    return cluster


def _endpoints(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    (locality,) = cluster["load_assignment"]["endpoints"]
    return [e["endpoint"]["address"] for e in locality["lb_endpoints"]]


def test_ext_proc_fails_closed_and_streams_responses() -> None:
    ext = _ext_proc(render(_settings({"servers": ONE_SERVER, "processor": {"message_timeout_ms": 1500}})))

    assert ext["failure_mode_allow"] is False
    assert ext["grpc_service"] == {"envoy_grpc": {"cluster_name": PROCESSOR_CLUSTER}}
    assert ext["message_timeout"] == "1.500s"
    assert ext["processing_mode"] == {
        "request_header_mode": "SEND",
        "request_body_mode": "BUFFERED",
        "request_trailer_mode": "SKIP",
        "response_header_mode": "SEND",
        "response_body_mode": "STREAMED",
        "response_trailer_mode": "SKIP",
    }


def test_exact_path_routes_per_server_then_405_then_404() -> None:
    cfg = render(_settings({"servers": TWO_SERVERS}))
    (vhost,) = _hcm(cfg)["route_config"]["virtual_hosts"]
    routes = vhost["routes"]

    assert [
        (r["match"].get("path", r["match"].get("prefix")), r.get("route", {}).get("prefix_rewrite")) for r in routes
    ] == [
        ("/weather/mcp", "/"),
        ("/weather/mcp", None),
        ("/github/mcp", "/mcp/readonly"),
        ("/github/mcp", None),
        ("/", None),
        ("/", None),
    ]
    methods = routes[0]["match"]["headers"]
    assert methods == [{"name": ":method", "string_match": {"safe_regex": {"regex": "^(POST|GET|DELETE)$"}}}]
    assert routes[0]["route"]["cluster"] == "mcp_server_weather"
    assert routes[2]["route"]["cluster"] == "mcp_server_github"
    assert all(r["route"]["timeout"] == "0s" for r in (routes[0], routes[2]))  # SSE streams must not be cut
    assert routes[1]["direct_response"]["status"] == 405
    assert routes[1]["response_headers_to_add"] == [{"header": {"key": "allow", "value": "POST, GET, DELETE"}}]
    assert routes[4]["route"] == {"cluster": BACKENDS_CLUSTER, "timeout": "0s", "retry_policy": SAFE_RETRY}
    assert routes[4]["match"]["headers"] == [{"name": UPSTREAM_HEADER, "present_match": True}]
    assert routes[5]["direct_response"]["status"] == 404
    assert vhost["request_headers_to_remove"] == ["accept-encoding", "x_mcp_user", "x_mcp_groups"]


@pytest.mark.parametrize(
    ("server", "authority"),
    [
        pytest.param({"upstream": "127.0.0.1:8000"}, "127.0.0.1:8000", id="upstream-default"),
        pytest.param({"upstream": "api.example.com:443", "tls": True}, "api.example.com", id="upstream-tls-443"),
        pytest.param({"upstream": "127.0.0.1:8000", "host": "mcp.internal"}, "mcp.internal", id="literal"),
        pytest.param({"upstream": "127.0.0.1:8000", "host": "client"}, None, id="client"),
    ],
)
def test_upstream_gets_its_own_authority_unless_configured(server: dict, authority: str | None) -> None:
    cfg = render(_settings({"servers": [{"name": "w", **server}]}))
    route = _hcm(cfg)["route_config"]["virtual_hosts"][0]["routes"][0]["route"]

    assert route.get("host_rewrite_literal") == authority


def test_edge_settings_are_rendered_from_gateway_yaml() -> None:
    edge = {
        "use_remote_address": False,
        "xff_num_trusted_hops": 2,
        "max_downstream_connections": 500,
        "max_heap_bytes": 256 << 20,
        "stream_idle_timeout_s": 60,
        "request_headers_timeout_s": 5,
        "http2_max_concurrent_streams": 50,
        "compress_responses": False,
    }
    cfg = render(_settings({"servers": ONE_SERVER, "edge": edge, "limits": {"max_concurrent_streams": 20_000}}))
    hcm = _hcm(cfg)

    assert (hcm["use_remote_address"], hcm["xff_num_trusted_hops"]) == (False, 2)
    assert (hcm["normalize_path"], hcm["merge_slashes"]) == (True, True)
    assert hcm["path_with_escaped_slashes_action"] == "REJECT_REQUEST"
    assert hcm["common_http_protocol_options"] == {"headers_with_underscores_action": "REJECT_REQUEST"}
    assert (hcm["stream_idle_timeout"], hcm["request_headers_timeout"]) == ("60.000s", "5.000s")
    assert hcm["http2_protocol_options"]["max_concurrent_streams"] == 50
    names = [f["name"] for f in hcm["http_filters"]]
    assert names == ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_proc", "envoy.filters.http.router"]
    monitors = {m["name"]: m["typed_config"] for m in cfg["overload_manager"]["resource_monitors"]}
    assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == 256 << 20
    conns = monitors["envoy.resource_monitors.global_downstream_max_connections"]
    assert conns["max_active_downstream_connections"] == 500
    for cluster in cfg["static_resources"]["clusters"][1:]:  # long-lived SSE streams each hold a request
        assert cluster["circuit_breakers"]["thresholds"][0]["max_requests"] == 20_000
    two = render(_settings({"servers": TWO_SERVERS}))
    assert _cluster(two, PROCESSOR_CLUSTER)["circuit_breakers"]["thresholds"][0]["max_requests"] == 40_000
    assert _cluster(two, "mcp_server_github")["circuit_breakers"]["thresholds"][0]["max_requests"] == 10_000
    assert cfg["static_resources"]["listeners"][0]["enable_reuse_port"] is False


def test_scoped_backends_go_through_the_per_request_cluster_and_clients_cannot_pick_it() -> None:
    cfg = render(_settings({"servers": [*ONE_SERVER, *SCOPED]}))
    (vhost,) = _hcm(cfg)["route_config"]["virtual_hosts"]
    names = [c["name"] for c in cfg["static_resources"]["clusters"]]

    assert "mcp_server_team" not in names
    assert [r["name"] for r in vhost["routes"]][:3] == ["weather", "weather_method_not_allowed", "backends"]
    cluster = _cluster(cfg, BACKENDS_CLUSTER)
    assert cluster["type"] == "ORIGINAL_DST" and cluster["lb_policy"] == "CLUSTER_PROVIDED"
    assert cluster["original_dst_lb_config"] == {"use_http_header": True, "http_header_name": UPSTREAM_HEADER}
    strip = _hcm(cfg)["http_filters"][0]  # runs before ext_proc: a client's copy never reaches the processor
    assert strip["typed_config"]["mutations"] == {"request_mutations": [{"remove": UPSTREAM_HEADER}]}


def test_upstream_clusters_tls_only_where_asked() -> None:
    cfg = render(_settings({"servers": TWO_SERVERS}))
    plain, tls = _cluster(cfg, "mcp_server_weather"), _cluster(cfg, "mcp_server_github")

    assert "transport_socket" not in plain
    assert plain["type"] == "STATIC"
    assert _endpoints(plain) == [{"socket_address": {"address": "127.0.0.1", "port_value": 8000}}]
    assert tls["transport_socket"]["name"] == "envoy.transport_sockets.tls"
    assert tls["transport_socket"]["typed_config"]["sni"] == "api.githubcopilot.com"
    assert tls["type"] == "STRICT_DNS"  # a host name, resolved by Envoy
    assert _endpoints(tls) == [{"socket_address": {"address": "api.githubcopilot.com", "port_value": 443}}]


def test_admin_is_loopback_only() -> None:
    cfg = render(_settings({"servers": ONE_SERVER, "admin": {"port": 9911}, "listen": {"address": "0.0.0.0"}}))

    assert cfg["admin"]["address"] == {"socket_address": {"address": "127.0.0.1", "port_value": 9911}}
    (listener,) = cfg["static_resources"]["listeners"]
    assert listener["address"]["socket_address"]["address"] == "0.0.0.0"


def test_listener_buffer_limit_is_the_request_body_limit() -> None:
    cfg = render(_settings({"servers": ONE_SERVER, "limits": {"max_request_body_bytes": 4096}}))

    assert cfg["static_resources"]["listeners"][0]["per_connection_buffer_limit_bytes"] == 4096


@pytest.mark.parametrize(
    ("processor", "expected"),
    [
        pytest.param(
            {"address": "127.0.0.1:7000"},
            [{"socket_address": {"address": "127.0.0.1", "port_value": 7000}}],
            id="tcp-1",
        ),
        pytest.param(
            {"address": "127.0.0.1:7000", "workers": 3},
            [{"socket_address": {"address": "127.0.0.1", "port_value": p}} for p in (7000, 7001, 7002)],
            id="tcp-3-consecutive-ports",
        ),
        pytest.param(
            {"address": "unix:/run/x.sock"},
            [{"pipe": {"path": "/run/x.sock"}}],
            id="unix-1-exact-path",
        ),
        pytest.param(
            {"address": "unix:/run/x.sock", "workers": 3},
            [{"pipe": {"path": f"/run/x.sock.{i}"}} for i in range(3)],
            id="unix-3-numbered-paths",
        ),
    ],
)
def test_one_processor_endpoint_per_worker(processor: dict, expected: list[dict]) -> None:
    s = _settings({"servers": ONE_SERVER, "processor": processor})
    cluster = _cluster(render(s), PROCESSOR_CLUSTER)

    assert processor_addresses(s) == expected
    assert _endpoints(cluster) == expected
    # Each worker binds exactly the endpoint Envoy is told about.
    bound = [listen_address(s, i) for i in range(s.processor.workers)]
    assert bound == [
        f"unix:{a['pipe']['path']}"
        if "pipe" in a
        else f"{a['socket_address']['address']}:{a['socket_address']['port_value']}"
        for a in expected
    ]
    assert cluster["type"] == "STATIC"
    http = cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert http["explicit_http_config"] == {"http2_protocol_options": {}}  # gRPC needs HTTP/2


def test_mcp_upstreams_retry_only_unsent_requests_and_close_idle_connections_first() -> None:
    cfg = render(_settings({"servers": TWO_SERVERS, "edge": {"upstream_idle_timeout_s": 3}}))
    (vhost,) = _hcm(cfg)["route_config"]["virtual_hosts"]
    upstream_routes = [r["route"] for r in vhost["routes"] if "route" in r]
    assert upstream_routes and all(r["retry_policy"] == SAFE_RETRY for r in upstream_routes)
    assert SAFE_RETRY == {"retry_on": "reset-before-request", "num_retries": 1}  # never a retry of a sent call
    clusters = {c["name"]: c for c in cfg["static_resources"]["clusters"]}
    for name in ("mcp_server_weather", "mcp_server_github", BACKENDS_CLUSTER):
        options = clusters[name]["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        assert options["common_http_protocol_options"] == {"idle_timeout": "3.000s"}
        assert options["explicit_http_config"] == {"http_protocol_options": {}}  # HTTP/1.1, as before
