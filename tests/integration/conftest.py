"""Real parts for integration tests: sample MCP servers (mcp SDK) and the gateway (processor + Envoy from the wheel).

Every fixture starts real processes on loopback and always stops them.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from gateway_parts import ALLOW_ALL, ForkedStack, Gateway, SampleServer
from zygote import ZygoteProcess, spawn

from extproc.authn.dev_issuer import DevIssuer
from extproc.launcher import free_port, http_ok, wait_until


def _stop(proc: subprocess.Popen | ZygoteProcess) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def start_mcp_server(tmp_path: Path) -> Iterator[Callable[..., SampleServer]]:
    """Factory: start a sample MCP server named ``name`` (SSE responses unless ``json_response``)."""
    started: list[SampleServer] = []

    def start(name: str = "demo", json_response: bool = False, *extra: str, mrtr: bool = False) -> SampleServer:
        """``extra``: more command-line options of the sample server (``--gzip always`` ...)."""
        port = free_port()
        args = ["--port", str(port), "--name", name, *extra]
        args += ["--json-response"] if json_response else []
        args += ["--mrtr"] if mrtr else []
        # Forked from a process that imported the server already (tests/support/zygote.py): ~1 s of CPU less.
        proc = spawn("extproc.demo.mcp_server", args, tmp_path / f"mcp-{name}.log")
        server = SampleServer(name, port, json_response, proc)
        started.append(server)

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"MCP server {name} exited: {(tmp_path / f'mcp-{name}.log').read_text()}")
            return http_ok(f"{server.base_url}/_seen")

        wait_until(ready, 20, f"MCP server {name}")
        return server

    yield start
    for s in started:
        _stop(s.proc)


@pytest.fixture(params=[False, True], ids=["sse", "json"])
def sample_server(request: pytest.FixtureRequest, start_mcp_server: Callable[..., SampleServer]) -> SampleServer:
    """One sample server, in SSE and in JSON response mode."""
    return start_mcp_server("demo", json_response=request.param)


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    """Factory: write a gateway.yaml for ``servers`` (plus ``overrides``) and start processor + Envoy."""
    started: list[Gateway] = []

    def start(
        servers: list[SampleServer], unix_socket: bool = False, server_settings: dict | None = None, **overrides: Any
    ) -> Gateway:
        """``server_settings``: more keys for every ``servers[]`` entry (``host`` ...)."""
        workdir = tmp_path / f"gw{len(started)}"
        workdir.mkdir()
        # Worker i listens on the port + i: the whole block must be free, not just its first port.
        processor = f"unix:{workdir}/p.sock" if unix_socket else f"127.0.0.1:{free_port(block=8)}"
        config: dict[str, Any] = {
            "listen": {"address": "127.0.0.1", "port": free_port()},
            "processor": {"address": processor},
            "admin": {"port": free_port()},
            "servers": [{"name": s.name, "upstream": s.upstream, **(server_settings or {})} for s in servers],
            "recording": {"directory": str(workdir / "recordings"), "flush_interval_ms": 50},
        }
        if "server_entries" in overrides:  # servers as written (backends, or none with discovery)
            config["servers"] = overrides.pop("server_entries")
        if "auth" not in overrides:
            config["allow_anonymous"] = True  # foundation tests; identity tests pass an auth section
        for key, value in overrides.items():
            config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
        path = workdir / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        gw = Gateway(ForkedStack(config=path, workdir=workdir), config, workdir / "gateway.log")
        started.append(gw)
        try:
            gw.stack.start(log=gw.log)
        except RuntimeError:  # a process died at start: its log says why (the folder is gone after the run)
            print(gw.log.read_text(errors="replace")[-4000:])
            raise
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def start_authed(start_gateway, issuer: DevIssuer, tmp_path: Path) -> Callable[..., Gateway]:
    """Start a gateway trusting ``issuer`` with the given policy (allow-all by default); public URL = endpoint."""

    def start(
        servers: list[SampleServer], policy: str = ALLOW_ALL, gateway: dict | None = None, **issuer_overrides: object
    ) -> Gateway:
        port = free_port()
        policies = tmp_path / f"policies-{port}"
        policies.mkdir()
        (policies / "policy.yaml").write_text(policy)
        auth = {
            "public_url": f"http://127.0.0.1:{port}",
            "issuers": [{"issuer": issuer.url, **issuer_overrides}],
            "forward_identity_headers": True,
        }
        policy_cfg = {"directory": str(policies), "reload_interval_ms": 200}
        return start_gateway(servers, listen={"port": port}, auth=auth, policy=policy_cfg, **(gateway or {}))

    return start
