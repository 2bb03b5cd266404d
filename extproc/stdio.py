"""stdio MCP servers behind the gateway (``servers[].stdio``): run behind a kept bridge, never one of our own.

The bridge starts the server's command, speaks MCP with it over stdin/stdout, and serves it as Streamable HTTP on
``127.0.0.1:<port>``, the server's upstream; from there on it is a server like any other (Envoy, policy, recording).
`up` starts each bridge before the processors and restarts one that dies (extproc/launcher.py).

``mcp-proxy`` (PyPI, the default; it needs the 1.x MCP SDK, so it lives in a virtualenv of its own, in the image
too): ``mcp-proxy --port P -- <command>``, serving /mcp. ``supergateway`` (npm): ``supergateway --stdio "<command>"
--outputTransport streamableHttp --stateful``. Both are tested through the gateway and measured side by side
(bench/stdio_bench.py); mcp-proxy is the default because it needs no second runtime (Node) in the image and holds
less memory.

Where a bridge comes from, first found: ``MCP_EXTPROC_SUPERGATEWAY`` / ``MCP_EXTPROC_MCP_PROXY`` (a path), the
PATH, then ``.stdio-bridge/`` under the working directory (what ``make stdio-bridge`` installs).
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from extproc.envoy.config import Server, Stdio
from extproc.errors import ConfigError

SUPERGATEWAY_VERSION = "4.0.0"
MCP_PROXY_VERSION = "0.13.0"
LOCAL = Path(".stdio-bridge")
_FOUND = {
    "supergateway": ("MCP_EXTPROC_SUPERGATEWAY", LOCAL / "node_modules" / ".bin" / "supergateway"),
    "mcp-proxy": ("MCP_EXTPROC_MCP_PROXY", LOCAL / "mcp-proxy" / "bin" / "mcp-proxy"),
}
_INSTALL = {
    "supergateway": f"make stdio-bridge, or npm install -g supergateway@{SUPERGATEWAY_VERSION}",
    "mcp-proxy": f"make stdio-bridge, or pip install mcp-proxy=={MCP_PROXY_VERSION} in a virtualenv of its own",
}


def bridge_binary(bridge: str) -> Path:
    """The bridge's executable; ConfigError naming how to install it when there is none."""
    env, local = _FOUND[bridge]
    for candidate in (os.environ.get(env), shutil.which(bridge), local):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate).resolve()
    raise ConfigError(f"servers[].stdio: the {bridge} bridge is not installed ({_INSTALL[bridge]}; or set {env})")


def bridge_command(server: Server) -> list[str]:
    """The bridge's command line for one stdio server."""
    stdio = server.stdio
    assert stdio is not None
    binary = str(bridge_binary(stdio.bridge))
    if stdio.bridge == "supergateway":
        return [binary, "--stdio", shlex.join(stdio.command), "--outputTransport", "streamableHttp", "--stateful",
                "--port", str(stdio.port), "--streamableHttpPath", server.path, "--logLevel", "info"]  # fmt: skip
    if server.path != "/mcp":
        raise ConfigError(f"servers[{server.name}].path: mcp-proxy serves /mcp only, not {server.path}")
    return [binary, "--host", "127.0.0.1", "--port", str(stdio.port), "--pass-environment", "--", *stdio.command]


def bridge_env(stdio: Stdio) -> dict[str, str]:
    """The bridge's environment, which the server inherits: the gateway's plus the server's ``env``."""
    return {**os.environ, **stdio.env}
