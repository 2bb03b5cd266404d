"""servers[].stdio: the config a stdio server is written with, and the bridge command `up` runs for it."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.envoy.config import Server
from extproc.errors import ConfigError
from extproc.settings import parse
from extproc.stdio import bridge_binary, bridge_command

COMMAND = ["npx", "-y", "some-mcp-server", "--root", "/data dir"]


def _server(**stdio: object) -> Server:
    return Server.model_validate({"name": "files", "stdio": {"command": COMMAND, "port": 18001, **stdio}})


def test_the_upstream_is_the_bridge_on_loopback() -> None:
    s = parse({"servers": [{"name": "files", "stdio": {"command": COMMAND, "port": 18001}}], "allow_anonymous": True})
    assert s.servers[0].upstream == "127.0.0.1:18001" and s.servers[0].stdio is not None
    assert s.servers[0].stdio.bridge == "mcp-proxy"


@pytest.mark.parametrize(
    ("stdio", "extra", "message"),
    [
        ({"command": [], "port": 18001}, {}, "at least 1 item"),
        ({"command": [""], "port": 18001}, {}, "the program to run"),
        ({"command": ["x"], "port": 0}, {}, "port"),
        ({"command": ["x"], "port": 18001, "bridge": "socat"}, {}, "mcp-proxy"),
        ({"command": ["x"], "port": 18001}, {"upstream": "10.0.0.1:80"}, "drop upstream"),
        ({"command": ["x"], "port": 18001}, {"backends": []}, "drop upstream"),
    ],
)
def test_bad_stdio_config_is_refused_by_name(stdio: dict, extra: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse({"servers": [{"name": "files", "stdio": stdio, **extra}], "allow_anonymous": True})


def test_each_bridge_runs_the_command_as_given(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name, env in (("mcp-proxy", "MCP_EXTPROC_MCP_PROXY"), ("supergateway", "MCP_EXTPROC_SUPERGATEWAY")):
        exe = tmp_path / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
        monkeypatch.setenv(env, str(exe))
    proxy = bridge_command(_server(bridge="mcp-proxy"))
    assert proxy[0] == str(tmp_path / "mcp-proxy") and proxy[proxy.index("--") + 1 :] == COMMAND
    assert proxy[proxy.index("--port") + 1] == "18001" and proxy[proxy.index("--host") + 1] == "127.0.0.1"
    gateway = bridge_command(_server(bridge="supergateway"))
    assert gateway[gateway.index("--stdio") + 1] == "npx -y some-mcp-server --root '/data dir'"  # one shell word each
    assert gateway[gateway.index("--streamableHttpPath") + 1] == "/mcp"


def test_mcp_proxy_serves_mcp_only() -> None:
    server = Server.model_validate(
        {"name": "files", "path": "/rpc", "stdio": {"command": COMMAND, "port": 18001, "bridge": "mcp-proxy"}}
    )
    with pytest.raises(ConfigError, match="mcp-proxy serves /mcp only"):
        bridge_command(server)


def test_a_missing_bridge_names_how_to_install_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # no .stdio-bridge/ here
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("MCP_EXTPROC_MCP_PROXY", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="make stdio-bridge, or pip install mcp-proxy==") as e:
        bridge_binary("mcp-proxy")
    assert "MCP_EXTPROC_MCP_PROXY" in str(e.value)
