"""A real redis-server for tests (budgets shared across workers and replicas): started in a temp dir on a free
loopback port, stopped and started again on the same port (a Redis outage and its end), always cleaned up."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from extproc.launcher import free_port, wait_until

REDIS_SERVER = "/usr/bin/redis-server"


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process, no persistence; ``url`` names database 0."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (again, on the same port) and wait until it answers PING."""
        cmd = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir)]
        cmd += ["--save", "", "--appendonly", "no", "--logfile", str(self.workdir / "redis.log")]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.workdir / 'redis.log').read_text()[-2000:]}")
            return _pong(self.port)

        wait_until(up, 20, "redis-server")
        return self

    def stop(self) -> None:
        """Stop it (an outage); the port stays this server's for ``start``."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
