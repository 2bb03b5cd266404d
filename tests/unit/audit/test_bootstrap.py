"""The audit service behind the gateway's listener: its own route and cluster, ext_proc disabled on that route."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from extproc.envoy.bootstrap import render, render_yaml
from extproc.envoy.clusters import AUDIT_CLUSTER
from extproc.envoy.process import envoy_binary
from extproc.errors import ConfigError
from extproc.settings import Settings, parse

BASE = {
    "servers": [{"name": "weather", "upstream": "127.0.0.1:8000"}],
    "auth": {"public_url": "https://mcp.example.com", "issuers": [{"issuer": "https://idp.example.com"}]},
    "policy": {"directory": "/etc/mcp/policies"},
}


def _settings(**audit: object) -> Settings:
    return parse({**BASE, "audit": {"port": 8091, **audit}})


def test_audit_route_comes_first_with_ext_proc_disabled() -> None:
    boot = render(_settings(prefix="/records/"))
    hcm = boot["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    routes = hcm["route_config"]["virtual_hosts"][0]["routes"]
    audit = routes[0]
    assert audit["match"] == {"path_separated_prefix": "/records"}
    assert audit["route"]["cluster"] == AUDIT_CLUSTER
    per_route = audit["typed_per_filter_config"]["envoy.filters.http.ext_proc"]
    assert per_route["disabled"] is True and per_route["@type"].endswith("ext_proc.v3.ExtProcPerRoute")
    assert all("typed_per_filter_config" not in r for r in routes[1:])  # MCP routes keep the processor
    cluster = next(c for c in boot["static_resources"]["clusters"] if c["name"] == AUDIT_CLUSTER)
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address == {"socket_address": {"address": "127.0.0.1", "port_value": 8091}}


def test_no_audit_section_no_audit_route() -> None:
    boot = render(parse(BASE))
    assert AUDIT_CLUSTER not in {c["name"] for c in boot["static_resources"]["clusters"]}


def test_envoy_accepts_the_audit_route(tmp_path: Path) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render_yaml(_settings()))
    proc = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(path), "--log-level", "error"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    "doc, words",
    [
        pytest.param({**BASE, "audit": {"prefix": "audit"}}, "audit.prefix", id="prefix-without-slashes"),
        pytest.param({**BASE, "audit": {"prefix": "/a/../b/"}}, "audit.prefix", id="prefix-dot-dot"),
        pytest.param({"servers": BASE["servers"], "allow_anonymous": True, "audit": {}}, "needs auth", id="no-auth"),
        pytest.param({**BASE, "servers": [{"name": "audit", "upstream": "127.0.0.1:1"}]}, "reserved", id="reserved"),
    ],
)
def test_bad_audit_settings_are_refused(doc: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse(doc)
