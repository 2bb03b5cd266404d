"""The tests' zygote (tests/support/zygote.py): a forked helper behaves as the same ``python -m`` started cold."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import zygote

from extproc.launcher import free_port, http_ok, wait_until


@pytest.fixture(autouse=True)
def _forked(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests are about the zygote: not started cold even in a run with MCP_TEST_ZYGOTE=0."""
    monkeypatch.delenv("MCP_TEST_ZYGOTE", raising=False)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],  # exit 0, stdout only, wrapped at the environment's COLUMNS
        ["sessions", "list", "--dir", "no-such-dir"],  # exit 2, the error on stderr, relative to the cwd
    ],
    ids=["help", "error"],
)
def test_a_forked_run_gives_what_a_cold_start_gives(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "97"}
    cold = subprocess.run([sys.executable, "-m", "extproc", *args], capture_output=True, text=True, env=env, timeout=60)
    forked = zygote.run("extproc", args, env=env, timeout=60)
    assert (forked.returncode, forked.stdout, forked.stderr) == (cold.returncode, cold.stdout, cold.stderr)
    assert cold.stdout or cold.stderr


def test_a_spawned_server_is_a_process_of_its_own_that_stops_as_popen_does(tmp_path: Path) -> None:
    port, log = free_port(), tmp_path / "server.log"
    proc = zygote.spawn("extproc.demo.mcp_server", ["--port", str(port), "--name", "z"], log)
    assert isinstance(proc, zygote.ZygoteProcess) and proc.pid not in (os.getpid(), zygote.zygote()._proc.pid)
    wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/_seen"), 20, "the forked sample server")
    assert proc.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.05)
    proc.terminate()
    assert proc.wait(10) == -signal.SIGTERM  # as subprocess.Popen reports uvicorn's exit on SIGTERM
    assert proc.poll() == -signal.SIGTERM
    proc.kill()  # already reaped: a no-op, not a signal to a reused pid


def test_a_crash_and_a_kill_are_reported(tmp_path: Path) -> None:
    crashed = zygote.spawn("extproc.demo.mcp_server", ["--port", "not-a-port"], tmp_path / "crash.log")
    assert crashed.wait(30) == 2  # argparse's usage error
    assert "invalid int value" in (tmp_path / "crash.log").read_text()
    port = free_port()
    killed = zygote.spawn("extproc.demo.mcp_server", ["--port", str(port)], tmp_path / "kill.log")
    killed.kill()
    assert killed.wait(10) == -signal.SIGKILL
