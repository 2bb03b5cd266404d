"""TLS in the rendered bootstrap: parsed into Envoy's own protobuf types, and every upstream context verifies."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from envoy.config.bootstrap.v3.bootstrap_pb2 import Bootstrap
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import Secret
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import UpstreamTlsContext
from google.protobuf import json_format

from extproc.envoy.bootstrap import render
from extproc.envoy.clusters import PROCESSOR_CLUSTER, processor_cluster, server_cluster, server_cluster_name
from extproc.envoy.fields import T
from extproc.envoy.tls import sds_files
from extproc.settings import Settings, parse

PEM = "/etc/mcp/tls"
ONE_SERVER = [{"name": "weather", "upstream": "127.0.0.1:8000"}]
LISTENER_MTLS = {
    "cert_file": f"{PEM}/cert.pem",
    "key_file": f"{PEM}/key.pem",
    "client_ca_file": f"{PEM}/clients.pem",
    "require_client_cert": True,
}
UPSTREAM_TLS = [
    *ONE_SERVER,
    {"name": "public", "upstream": "api.githubcopilot.com:443", "path": "/p", "tls": True},
    {
        "name": "own-ca",
        "upstream": "10.0.0.5:8443",
        "path": "/c",
        "tls": True,
        "tls_ca_file": f"{PEM}/upstream-ca.pem",
        "tls_server_name": "mcp.internal",
    },
    {"name": "by-ip", "upstream": "10.0.0.6:8443", "path": "/i", "tls": True, "tls_ca_file": f"{PEM}/up.pem"},
    {"name": "lab", "upstream": "lab.local:8443", "path": "/l", "tls": True, "tls_insecure_skip_verify": True},
]
PROCESSOR_MTLS = {
    "address": "10.0.0.9:50051",
    "tls": {
        "cert_file": f"{PEM}/processor.pem",
        "key_file": f"{PEM}/processor.key",
        "ca_file": f"{PEM}/ca.pem",
        "client_cert_file": f"{PEM}/envoy.pem",
        "client_key_file": f"{PEM}/envoy.key",
        "server_name": "extproc.internal",
    },
}
CONFIGS = [
    pytest.param({"servers": ONE_SERVER}, id="plain"),
    pytest.param({"servers": ONE_SERVER, "listen": {"tls": LISTENER_MTLS}}, id="listener-tls-mtls"),
    pytest.param(
        {"servers": ONE_SERVER, "listen": {"tls": {"cert_file": f"{PEM}/c.pem", "key_file": f"{PEM}/k.pem"}}},
        id="listener-tls",
    ),
    pytest.param({"servers": UPSTREAM_TLS}, id="upstream-tls-ca-sni-insecure"),
    pytest.param({"servers": ONE_SERVER, "processor": PROCESSOR_MTLS}, id="processor-mtls"),
    pytest.param({"servers": ONE_SERVER, "processor": {"address": "unix:/run/mcp/extproc.sock"}}, id="unix-socket"),
    pytest.param(
        {"servers": ONE_SERVER, "processor": {"address": "127.0.0.1:7000", "workers": 3}, "admin": {"stats_port": 9}},
        id="3-workers-stats",
    ),
    pytest.param(
        {
            "servers": UPSTREAM_TLS,
            "listen": {"address": "0.0.0.0", "tls": LISTENER_MTLS},
            "processor": {**PROCESSOR_MTLS, "workers": 2},
        },
        id="everything",
    ),
]


def _settings(doc: dict[str, Any]) -> Settings:
    return parse({"allow_anonymous": True, **doc})


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _register_types(doc: dict[str, Any]) -> None:
    """Import the protobuf modules of every ``@type`` in ``doc``, so ``ParseDict`` can resolve the ``Any``s."""
    for node in _walk(doc):
        url = node.get("@type")
        if isinstance(url, str):
            package = url.removeprefix("type.googleapis.com/").rsplit(".", 1)[0]
            module = importlib.import_module(package)
            for info in pkgutil.iter_modules(module.__path__):
                if info.name.endswith("_pb2"):
                    importlib.import_module(f"{package}.{info.name}")


def _parse(doc: dict[str, Any]) -> Bootstrap:
    _register_types(doc)
    return json_format.ParseDict(doc, Bootstrap())


@pytest.mark.parametrize("doc", CONFIGS)
def test_rendered_bootstrap_parses_into_envoys_protobuf(doc: dict[str, Any], tmp_path: Path) -> None:
    s = _settings(doc)
    cfg = render(s, tmp_path / "sds")

    parsed = _parse(cfg)

    assert {c.name for c in parsed.static_resources.clusters} == {
        c["name"] for c in cfg["static_resources"]["clusters"]
    }
    assert parsed.static_resources.listeners[0].name == "mcp"
    assert parsed.node.id == ("mcp-extproc" if s.listen.tls else "")  # SDS needs a node
    for text in sds_files(s).values():  # the SDS files the listener refers to
        (resource,) = yaml.safe_load(text)["resources"]
        _register_types(resource)
        json_format.ParseDict({k: v for k, v in resource.items() if k != "@type"}, Secret())


def test_the_protobuf_parse_rejects_a_misspelt_field() -> None:
    """Guards the test above: ParseDict checks field names inside the typed configs too."""
    cfg = render(_settings({"servers": UPSTREAM_TLS}))
    socket = next(c for c in cfg["static_resources"]["clusters"] if "transport_socket" in c)["transport_socket"]
    socket["typed_config"]["common_tls_context"]["validaton_context"] = {}

    with pytest.raises(json_format.ParseError, match="validaton_context"):
        _parse(cfg)


def _upstream_contexts(cfg: dict[str, Any]) -> list[tuple[str, UpstreamTlsContext]]:
    """Every UpstreamTlsContext anywhere in ``cfg``, with the cluster that holds it."""
    found = []
    for cluster in cfg["static_resources"]["clusters"]:
        for node in _walk(cluster):
            if node.get("@type") == T + "extensions.transport_sockets.tls.v3.UpstreamTlsContext":
                body = {k: v for k, v in node.items() if k != "@type"}
                found.append((cluster["name"], json_format.ParseDict(body, UpstreamTlsContext())))
    everywhere = sum(1 for n in _walk(cfg) if str(n.get("@type", "")).endswith("UpstreamTlsContext"))
    assert everywhere == len(found)  # none outside a cluster
    return found


@pytest.mark.parametrize("doc", CONFIGS)
def test_every_upstream_tls_context_verifies_unless_explicitly_insecure(doc: dict[str, Any]) -> None:
    s = _settings(doc)
    insecure = {server_cluster_name(x) for x in s.servers if x.tls_insecure_skip_verify}
    tls_clusters = {server_cluster_name(x) for x in s.servers if x.tls} | (
        {PROCESSOR_CLUSTER} if s.processor.tls else set()
    )

    contexts = _upstream_contexts(render(s))

    assert {name for name, _ in contexts} == tls_clusters
    for name, ctx in contexts:
        assert ctx.sni
        validation = ctx.common_tls_context.validation_context
        if name in insecure:
            assert not ctx.common_tls_context.HasField("validation_context")
            continue
        assert validation.trusted_ca.filename
        (san,) = validation.match_typed_subject_alt_names
        assert san.matcher.exact == ctx.sni


@pytest.mark.parametrize(
    ("server", "san_type", "name", "ca"),
    [
        pytest.param({"upstream": "api.example.com:443"}, "DNS", "api.example.com", None, id="system-ca"),
        pytest.param(
            {"upstream": "10.0.0.5:8443", "tls_ca_file": "/ca.pem", "tls_server_name": "mcp.internal"},
            "DNS",
            "mcp.internal",
            "/ca.pem",
            id="own-ca-and-name",
        ),
        pytest.param(
            {"upstream": "10.0.0.6:8443", "tls_ca_file": "/ca.pem"}, "IP_ADDRESS", "10.0.0.6", "/ca.pem", id="ip"
        ),
    ],
)
def test_a_tls_server_cluster_is_verified_as_it_is_built(
    server: dict, san_type: str, name: str, ca: str | None
) -> None:
    """The cluster builder itself writes the verified context: no later pass has to replace an unverified one."""
    (srv,) = _settings({"servers": [{"name": "s", "tls": True, **server}]}).servers

    socket = server_cluster(srv, idle_timeout_s=5)["transport_socket"]["typed_config"]

    assert socket["sni"] == name
    validation = socket["common_tls_context"]["validation_context"]
    assert validation["match_typed_subject_alt_names"] == [{"san_type": san_type, "matcher": {"exact": name}}]
    if ca is not None:
        assert validation["trusted_ca"] == {"filename": ca}
    else:
        assert Path(validation["trusted_ca"]["filename"]).is_file()


def test_the_processor_cluster_is_built_with_mutual_tls() -> None:
    socket = processor_cluster(_settings({"servers": ONE_SERVER, "processor": PROCESSOR_MTLS}))["transport_socket"]
    common = socket["typed_config"]["common_tls_context"]

    assert socket["typed_config"]["sni"] == "extproc.internal"
    assert common["tls_certificates"] == [
        {"certificate_chain": {"filename": f"{PEM}/envoy.pem"}, "private_key": {"filename": f"{PEM}/envoy.key"}}
    ]
    assert common["validation_context"]["trusted_ca"] == {"filename": f"{PEM}/ca.pem"}
    assert "transport_socket" not in processor_cluster(_settings({"servers": ONE_SERVER}))
