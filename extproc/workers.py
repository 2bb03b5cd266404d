"""`mcp-extproc serve --workers N`: N processor processes, each on its own endpoint (port+i or socket.i).

One Python process is one core's worth of ext_proc work; Envoy balances streams over the workers' endpoints
(the bootstrap lists one endpoint per worker). Each worker records as its own writer, so no file or object is
shared; a worker that dies is started again, and its successor's completer finishes what it left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from extproc.settings import Settings

log = logging.getLogger(__name__)

RESTART_BACKOFF = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # seconds before restart n of a worker that keeps dying
STABLE_AFTER = 60.0  # a worker that ran this long starts again from the shortest backoff

# Set by the launcher for each worker it starts: the worker writes its pid there once it serves on its own socket.
READY_FILE_ENV = "MCP_EXTPROC_READY_FILE"


async def serve_and_announce(settings: Settings, worker: int, passthrough: bool = False) -> None:
    """Serve one worker; once it serves, write its pid to $MCP_EXTPROC_READY_FILE (when set).

    A health check alone cannot tell the launcher that *this* process serves: another process already on the port
    answers it too. The file is written only after this process bound its address and started serving.
    """
    from extproc.server import serve

    ready = asyncio.Event()
    path = os.environ.get(READY_FILE_ENV)

    async def announce() -> None:
        await ready.wait()
        if path:
            tmp = f"{path}.tmp"
            Path(tmp).write_text(str(os.getpid()))  # noqa: ASYNC240 (a few bytes, once)
            os.replace(tmp, path)

    task = asyncio.create_task(announce())
    try:
        await serve(settings, worker=worker, ready=ready, passthrough=passthrough)
    finally:
        task.cancel()


class StopSignal:
    """SIGTERM/SIGINT set ``requested``; supervisor loops poll it and then shut their children down in order."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._set)

    def _set(self, *_: object) -> None:
        self.requested = True


def worker_command(config: Path, worker: int, verbose: bool = False, log_format: str | None = None) -> list[str]:
    """The command line of processor worker ``worker`` (it listens on its own port or socket)."""
    cmd = [sys.executable, "-m", "extproc", "serve", "--config", str(config), "--worker", str(worker)]
    return cmd + (["--verbose"] if verbose else []) + (["--log-format", log_format] if log_format else [])


def _start(
    config: Path, worker: int, verbose: bool, log_format: str | None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(worker_command(config, worker, verbose, log_format), env=env)


def serve_workers(config: Path, count: int, verbose: bool = False, log_format: str | None = None) -> int:
    """Run ``count`` workers until SIGTERM/SIGINT, restarting any that dies (with backoff); then stop them all.

    With Kubernetes discovery this process runs the one watch of the pod and hands the workers its snapshot
    (``extproc.kube.discovery``): the API server sees one watch per pod, not one per worker."""
    import shutil
    import tempfile

    from extproc import settings as settings_mod
    from extproc.kube.discovery import watch_for_workers
    from extproc.kube.snapshot import DISCOVERY_FILE_ENV

    stop = StopSignal()
    shared = Path(tempfile.mkdtemp(prefix="mcp-extproc-discovery-"))
    discovery = watch_for_workers(settings_mod.load(config), shared / "discovery.json")
    env = {**os.environ, DISCOVERY_FILE_ENV: str(shared / "discovery.json")} if discovery is not None else None
    try:
        return _supervise(config, count, verbose, log_format, env, stop)
    finally:
        if discovery is not None:
            discovery.close()
        shutil.rmtree(shared, ignore_errors=True)


def _supervise(
    config: Path, count: int, verbose: bool, log_format: str | None, env: dict[str, str] | None, stop: StopSignal
) -> int:
    procs = {i: _start(config, i, verbose, log_format, env) for i in range(count)}
    started = dict.fromkeys(procs, time.monotonic())
    deaths = dict.fromkeys(procs, 0)
    restart_at: dict[int, float] = {}
    log.info("started %d processor workers: %s", count, [p.pid for p in procs.values()])
    while not stop.requested:
        time.sleep(0.2)  # a supervisor's poll, not a wait for a test condition
        now = time.monotonic()
        for i, p in procs.items():
            if p.poll() is None or stop.requested:
                continue
            if i not in restart_at:
                deaths[i] = 0 if now - started[i] > STABLE_AFTER else deaths[i]
                delay = RESTART_BACKOFF[min(deaths[i], len(RESTART_BACKOFF) - 1)]
                deaths[i] += 1
                restart_at[i] = now + delay
                log.error("worker %d (pid %d) exited with %s; restarting in %.1fs", i, p.pid, p.returncode, delay)
            elif now >= restart_at[i]:
                del restart_at[i]
                procs[i], started[i] = _start(config, i, verbose, log_format, env), now
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    status = 0
    for p in procs.values():
        try:
            status = max(status, p.wait(60) or 0)
        except subprocess.TimeoutExpired:
            p.kill()
            status = 1
    return status
