"""The running parts of a conformance run: the server under test, the gateway in front of it, the token injector.

Server under test, in order of preference:
- ``reference``: the suite's reference server (``examples/servers/typescript/everything-server.ts`` of the
  conformance repository). No package registry ships it, so its folder (with its package.json and
  package-lock.json) is given by path; its npm dependencies are installed from the npm registry into
  ``.conformance/reference/`` and it runs on the pinned Node through ``tsx``. Its source is never committed here.
- ``fixture``: the project's own fixture server (``fixture_server.py``, official Python SDK, both revisions),
  written to the scenarios' stated requirements: the core tools, resources and prompts, and basic MRTR.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from suite import TOOLS, node_bin, tool_env

from extproc.launcher import Stack, can_connect, free_port, http_ok, wait_until
from extproc.recording.manifest import generate_keys

REFERENCE_FILES = ("everything-server.ts", "package.json", "package-lock.json")

ALLOW_ALL = """\
apiVersion: mcp-extproc/v1
rules:
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
"""


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class ServerUnderTest:
    """A running MCP server the suite is pointed at, directly or through the gateway."""

    kind: str
    port: int
    proc: subprocess.Popen
    description: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    @property
    def upstream(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.proc)


def start_reference(source: Path, log: Path) -> ServerUnderTest:
    """Install the reference server's npm dependencies (npm ci from its lock file) and start it on a free port."""
    missing = [name for name in REFERENCE_FILES if not (source / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{source}: not the reference server's folder (missing {', '.join(missing)})")
    work = TOOLS / "reference"
    work.mkdir(parents=True, exist_ok=True)
    lock_changed = (
        not (work / "package-lock.json").exists()
        or (work / "package-lock.json").read_bytes() != (source / "package-lock.json").read_bytes()
    )
    for name in REFERENCE_FILES:
        shutil.copyfile(source / name, work / name)
    if lock_changed or not (work / "node_modules" / ".bin" / "tsx").exists():
        npm = shutil.which("npm") or "npm"
        with log.open("ab") as out:
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=work,
                env=tool_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
    port = free_port()
    env = {**tool_env(), "PORT": str(port)}
    cmd = [str(node_bin() / "node"), str(work / "node_modules" / "tsx" / "dist" / "cli.mjs"), "everything-server.ts"]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = ServerUnderTest("reference", port, proc, f"reference everything-server.ts from {source}")
    _wait_listening(server, log)
    return server


def start_fixture(log: Path) -> ServerUnderTest:
    """The project's conformance fixture server (official Python SDK, both protocol revisions)."""
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).with_name("fixture_server.py")), str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = ServerUnderTest("fixture", port, proc, "tests/conformance/fixture_server.py (mcp Python SDK)")
    _wait_listening(server, log)
    return server


def _wait_listening(server: ServerUnderTest, log: Path) -> None:
    def ready() -> bool:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.kind} server exited with status {server.proc.returncode}; see {log}")
        return can_connect(server.upstream)

    wait_until(ready, 60, f"the {server.kind} server")


@dataclass
class Gateway:
    """Processor + Envoy in front of one server, named ``conformance``; anonymous or with auth and a policy."""

    stack: Stack
    config: dict[str, Any]
    workdir: Path
    log: Path
    proxy_port: int | None = None  # with auth: where the token proxy listens, which is the gateway's public URL
    proxy: subprocess.Popen | None = field(default=None)

    @property
    def recordings(self) -> Path:
        return Path(self.config["recording"]["directory"])

    @property
    def public_key(self) -> Path:
        return self.workdir / "keys" / "signing.pub"

    @property
    def url(self) -> str:
        """Where the suite connects: Envoy itself, or the token injector in front of it."""
        if self.proxy is not None:
            return f"http://127.0.0.1:{self.proxy_port}/conformance/mcp"
        return self.stack.url("conformance")

    def downstream_requests(self) -> int:
        """How many HTTP requests Envoy's listener received (its own counter, read from the admin port)."""
        import httpx

        stats = httpx.get(f"http://127.0.0.1:{self.config['admin']['port']}/stats?format=json", timeout=5).json()
        for stat in stats["stats"]:
            if stat.get("name") == "http.mcp.downstream_rq_total":
                return int(stat["value"])
        raise RuntimeError("Envoy reports no http.mcp.downstream_rq_total counter")

    def refusals(self) -> dict[str, int]:
        """Requests the processor answered itself, by reason (error class), from its Prometheus counter."""
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.config['processor']['metrics_port']}/metrics", timeout=5).text
        out: dict[str, int] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == "mcp_extproc_refusals_total":
                    reason = sample.labels["reason"]
                    out[reason] = out.get(reason, 0) + int(sample.value)
        return out

    def stop(self) -> None:
        if self.proxy is not None:
            stop_process(self.proxy)
            self.proxy = None
        self.stack.stop()


def start_gateway(server: ServerUnderTest, workdir: Path, issuer_url: str | None = None) -> Gateway:
    """A gateway for ``server``; anonymous when ``issuer_url`` is None, else auth + an allow-everything policy.

    With auth, clients reach the gateway through the token proxy, so the proxy's address is its public URL
    (the token audience, and the one Origin a browser client on it would send).
    """
    workdir.mkdir(parents=True)
    generate_keys(workdir / "keys")
    proxy_port = free_port() if issuer_url is not None else None
    config: dict[str, Any] = {
        "listen": {"address": "127.0.0.1", "port": free_port()},
        "processor": {"address": f"127.0.0.1:{free_port()}", "metrics_port": free_port()},
        "admin": {"port": free_port()},
        "servers": [{"name": "conformance", "upstream": server.upstream, "path": "/mcp"}],
        "recording": {
            "directory": str(workdir / "recordings"),
            "flush_interval_ms": 50,
            "signing_key": str(workdir / "keys" / "signing.key"),
        },
    }
    if issuer_url is None:
        config["allow_anonymous"] = True
    else:
        policies = workdir / "policies"
        policies.mkdir()
        (policies / "allow-all.yaml").write_text(ALLOW_ALL)
        config["auth"] = {"public_url": f"http://127.0.0.1:{proxy_port}", "issuers": [{"issuer": issuer_url}]}
        config["policy"] = {"directory": str(policies)}
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    log = workdir / "gateway.log"
    gw = Gateway(Stack(config=path, workdir=workdir), config, workdir, log, proxy_port)
    gw.stack.start(log=log)
    return gw


def start_token_proxy(gw: Gateway, token: str) -> None:
    """The suite has no option for a bearer token: a loopback proxy in front of Envoy adds one to every request."""
    port = gw.proxy_port
    if port is None:
        raise ValueError("a token proxy is for a gateway with auth")
    env = {**os.environ, "CONFORMANCE_BEARER_TOKEN": token}
    cmd = [sys.executable, str(Path(__file__).with_name("token_proxy.py")), str(port), gw.stack.endpoint]
    with gw.log.open("ab") as out:
        gw.proxy = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)

    def ready() -> bool:
        if gw.proxy is not None and gw.proxy.poll() is not None:
            raise RuntimeError(f"token proxy exited with status {gw.proxy.returncode}; see {gw.log}")
        return http_ok(f"http://127.0.0.1:{port}/_proxy_ready")

    wait_until(ready, 20, "the token proxy")
