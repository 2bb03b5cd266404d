"""TLS through real Envoy, with a test CA made here (`cryptography`): the listener (SDK client over https,
certificate files rotated while running, client certificates required), verified upstream TLS, and mutual TLS
between Envoy and the processor over TCP."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
import yaml
from cryptography import x509
from gateway_parts import ACCEPT, ForkedStack, Gateway, open_session
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tls_certs import TestCA

from extproc.demo.mcp_client import call_tool
from extproc.launcher import free_port, wait_until

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


def _serial(port: int, ca: TestCA) -> int:
    """The serial number of the certificate a new TLS connection to the listener gets."""
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
    ):
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def _ssl(ca: TestCA, client: Any = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca.pem))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    return ctx


def _check_metadata(url: str, public: str, ca: TestCA) -> None:
    """RFC 9728 end to end over https: the challenge points at https metadata naming the https resource."""
    with httpx.Client(verify=_ssl(ca)) as http:
        challenge = http.post(url, json=INIT, headers=ACCEPT)
        assert challenge.status_code == 401
        meta_url = challenge.headers["www-authenticate"].split('resource_metadata="')[1].split('"')[0]
        assert meta_url.startswith(f"{public}/.well-known/oauth-protected-resource")
        assert http.get(meta_url).json()["resource"] == public


async def test_sdk_client_over_tls_https_public_url_and_rotation(
    start_mcp_server, start_gateway, issuer, ca: TestCA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = tmp_path / "certs"
    first = ca.issue("tls", ["127.0.0.1", "localhost"], folder=certs)
    port = free_port()
    public = f"https://127.0.0.1:{port}"
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "p.yaml").write_text(
        "apiVersion: mcp-extproc/v1\nrules:\n  - name: all\n    effect: allow\n"
        "    subjects: {users: ['*']}\n    targets: {servers: ['*'], methods: ['*']}\n"
    )
    start_gateway(
        [start_mcp_server("demo")],
        listen={"port": port, "tls": {"cert_file": str(first.cert), "key_file": str(first.key)}},
        auth={"public_url": public, "issuers": [{"issuer": issuer.url}]},
        policy={"directory": str(policies)},
    )
    url = f"{public}/demo/mcp"
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.pem))  # the SDK's HTTP client trusts the test CA
    token = issuer.mint("alice", aud=public)
    assert (await call_tool(url, "echo", {"text": "over tls"}, token=token))["content"][0]["text"] == "over tls"

    _check_metadata(url, public, ca)
    for offered, chosen in ((["h2", "http/1.1"], "h2"), (["http/1.1"], "http/1.1")):  # ALPN
        ctx = _ssl(ca)
        ctx.set_alpn_protocols(offered)
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            assert conn.selected_alpn_protocol() == chosen
    old = _ssl(ca)  # TLS 1.2 is the floor: a client that offers only 1.0/1.1 (deprecated names, on purpose)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "ssl.TLSVersion.TLSv1", DeprecationWarning)
        old.minimum_version, old.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError), socket.create_connection(("127.0.0.1", port)) as raw:
        old.wrap_socket(raw, server_hostname="127.0.0.1")

    # Rotation: new files moved into the watched folder; new connections get the new certificate, no restart.
    assert _serial(port, ca) == first.serial
    second = ca.issue("tls", ["127.0.0.1", "localhost"], folder=certs)
    wait_until(lambda: _serial(port, ca) == second.serial, 20, "the listener to serve the rotated certificate")
    assert (await call_tool(url, "echo", {"text": "after"}, token=token))["content"][0]["text"] == "after"


def test_client_certificate_required_and_refused_when_absent(
    start_mcp_server, start_gateway, ca: TestCA, tmp_path: Path
) -> None:
    server = ca.issue("tls", ["127.0.0.1"], folder=tmp_path / "certs")
    clients = TestCA(tmp_path / "client-ca", name="clients CA")
    alice = clients.issue("alice", ["alice"], client=True)
    stranger = TestCA(tmp_path / "other-ca", name="another CA").issue("mallory", ["mallory"], client=True)
    port = free_port()
    tls = {"cert_file": str(server.cert), "key_file": str(server.key)}
    tls |= {"client_ca_file": str(clients.pem), "require_client_cert": True}
    start_gateway([start_mcp_server("demo")], listen={"port": port, "tls": tls})
    url = f"https://127.0.0.1:{port}/demo/mcp"

    with httpx.Client(verify=_ssl(ca, alice)) as http:
        assert http.post(url, json=INIT, headers=ACCEPT).status_code == 200
    for who in (None, stranger):
        with pytest.raises(httpx.TransportError), httpx.Client(verify=_ssl(ca, who)) as http:
            http.post(url, json=INIT, headers=ACCEPT)


@pytest.fixture
def tls_mcp_server(tmp_path: Path) -> Iterator[Callable[[Any], int]]:
    """Start the sample MCP server over HTTPS with a given certificate; returns its port."""
    procs: list[subprocess.Popen] = []

    def start(cert: Any) -> int:
        port = free_port()
        cmd = [sys.executable, "-m", "extproc.demo.mcp_server", "--port", str(port), "--name", "demo"]
        cmd += ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        def up() -> bool:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(up, 20, "the TLS MCP server")
        return port

    yield start
    for p in procs:
        p.terminate()
        p.wait(10)


def _gateway_for(tmp_path: Path, server: dict[str, Any], request: pytest.FixtureRequest) -> Gateway:
    """A gateway (anonymous, plain-HTTP listener) in front of one server entry given as written in gateway.yaml."""
    workdir = tmp_path / "gw"
    workdir.mkdir()
    config = {
        "listen": {"address": "127.0.0.1", "port": free_port()},
        "processor": {"address": f"127.0.0.1:{free_port()}"},
        "admin": {"port": free_port()},
        "servers": [server],
        "recording": {"directory": str(workdir / "recordings"), "flush_interval_ms": 50},
        "allow_anonymous": True,
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    gw = Gateway(ForkedStack(config=path, workdir=workdir), config, workdir / "gateway.log")
    request.addfinalizer(gw.stop)
    gw.stack.start(log=gw.log)
    return gw


@pytest.mark.parametrize(
    ("cert_names", "server_opts", "expect"),
    [
        pytest.param(["localhost"], {"tls_server_name": "localhost"}, 200, id="verified"),
        pytest.param(["127.0.0.1"], {}, 200, id="verified-ip-san"),
        pytest.param(["other.example"], {"tls_server_name": "localhost"}, 503, id="cert-for-another-name"),
        pytest.param(["localhost"], {"tls_server_name": "localhost", "ca": "system"}, 503, id="untrusted-ca"),
        pytest.param(["other.example"], {"tls_insecure_skip_verify": True}, 200, id="explicit-opt-out"),
    ],
)
def test_upstream_tls_is_verified(
    request: pytest.FixtureRequest,
    tls_mcp_server,
    ca: TestCA,
    tmp_path: Path,
    cert_names: list[str],
    server_opts: dict,
    expect: int,
) -> None:
    port = tls_mcp_server(ca.issue("upstream", cert_names, folder=tmp_path / "up"))
    opts = dict(server_opts)
    if opts.pop("ca", None) is None and not opts.get("tls_insecure_skip_verify"):
        opts["tls_ca_file"] = str(ca.pem)
    gw = _gateway_for(tmp_path, {"name": "demo", "upstream": f"127.0.0.1:{port}", "tls": True, **opts}, request)
    r = httpx.post(gw.url(), json=INIT, headers=ACCEPT, timeout=10)
    assert r.status_code == expect, r.text
    if expect == 503:
        assert r.json()["error"]["message"] == "MCP server unavailable"
    if opts.get("tls_insecure_skip_verify"):
        assert "NOT verified" in gw.log.read_text()


def test_envoy_to_processor_over_tcp_with_mutual_tls(start_mcp_server, start_gateway, ca: TestCA) -> None:
    proc_cert = ca.issue("processor", ["127.0.0.1"])
    envoy_cert = ca.issue("envoy", ["envoy"], client=True)
    tls = {
        "cert_file": str(proc_cert.cert),
        "key_file": str(proc_cert.key),
        "ca_file": str(ca.pem),
        "client_cert_file": str(envoy_cert.cert),
        "client_key_file": str(envoy_cert.key),
    }
    gw = start_gateway([start_mcp_server("demo")], processor={"tls": tls})
    headers = open_session(gw.url())  # an MCP session through Envoy, which spoke TLS to the processor
    assert headers["mcp-session-id"]

    address = gw.config["processor"]["address"]
    request = health_pb2.HealthCheckRequest(service="")
    with grpc.insecure_channel(address) as plain, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(plain).Check(request, timeout=3)
    no_cert = grpc.ssl_channel_credentials(ca.pem.read_bytes())
    with grpc.secure_channel(address, no_cert) as ch, pytest.raises(grpc.RpcError):
        health_pb2_grpc.HealthStub(ch).Check(request, timeout=3)
    creds = grpc.ssl_channel_credentials(ca.pem.read_bytes(), envoy_cert.key.read_bytes(), envoy_cert.cert.read_bytes())
    with grpc.secure_channel(address, creds) as ch:
        assert health_pb2_grpc.HealthStub(ch).Check(request, timeout=3).status == health_pb2.HealthCheckResponse.SERVING
