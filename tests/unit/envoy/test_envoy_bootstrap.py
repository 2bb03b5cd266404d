"""The rendered Envoy bootstrap: accepted by the real Envoy binary, and shaped the way the processor relies on."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from extproc.envoy.bootstrap import BACKENDS_CLUSTER, PROCESSOR_CLUSTER, processor_addresses, render, render_yaml
from extproc.launcher import envoy_binary
from extproc.routing import UPSTREAM_HEADER
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
    assert [f["name"] for f in filters] == [
        "envoy.filters.http.header_mutation",
        "envoy.filters.http.ext_proc",
        "envoy.filters.http.router",
    ]
    return filters[1]["typed_config"]


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


def test_one_route_per_server_with_prefix_rewrite_then_404() -> None:
    cfg = render(_settings({"servers": TWO_SERVERS}))
    (vhost,) = _hcm(cfg)["route_config"]["virtual_hosts"]
    routes = vhost["routes"]

    assert [(r["match"], r.get("route", {}).get("prefix_rewrite")) for r in routes] == [
        ({"path_separated_prefix": "/weather/mcp"}, "/"),
        ({"path_separated_prefix": "/github/mcp"}, "/mcp/readonly"),
        ({"prefix": "/", "headers": [{"name": UPSTREAM_HEADER, "present_match": True}]}, None),
        ({"prefix": "/"}, None),
    ]
    assert routes[0]["route"]["cluster"] == "mcp_server_weather"
    assert routes[1]["route"]["cluster"] == "mcp_server_github"
    assert all(r["route"]["timeout"] == "0s" for r in routes[:2])  # SSE streams must not be cut
    assert routes[2]["route"] == {"cluster": BACKENDS_CLUSTER, "timeout": "0s"}
    assert routes[3]["direct_response"]["status"] == 404


def test_scoped_backends_go_through_the_per_request_cluster_and_clients_cannot_pick_it() -> None:
    cfg = render(_settings({"servers": [*ONE_SERVER, *SCOPED]}))
    (vhost,) = _hcm(cfg)["route_config"]["virtual_hosts"]
    names = [c["name"] for c in cfg["static_resources"]["clusters"]]

    assert "mcp_server_team" not in names and [r["name"] for r in vhost["routes"]][:2] == ["weather", "backends"]
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
