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


SLEEPER = """
import subprocess, sys, time
grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print(grandchild.pid, flush=True)
time.sleep(120)
"""


def _gone(pid: int) -> bool:
    """Exited (a zombie whose new parent has not reaped it yet counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _sleeper(tmp_path: Path) -> Path:
    """A module that starts a grandchild in its process group, prints its pid, and sleeps."""
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    return tmp_path / "sleeper.log"


def _started(log: Path) -> int:
    wait_until(lambda: log.exists() and log.read_text().strip(), 20, "the sleeper's grandchild")
    return int(log.read_text().split()[0])


def _kill(*pids: int) -> None:
    for pid in pids:  # what a failed test left behind: only the pids it started
        if not _gone(pid):
            os.kill(pid, signal.SIGKILL)


def test_a_zygote_that_does_not_answer_fails_the_request_with_a_clear_error() -> None:
    """Before, the request read the pipe with no deadline: a hung (here: stopped) zygote hung its test."""
    z = zygote.Zygote(preload=(), timeout=0.3)
    os.kill(z.pid, signal.SIGSTOP)
    try:
        with pytest.raises(RuntimeError, match=r"did not answer 'cpu' within 0\.3 s; it was killed"):
            z.cpu_seconds()
        assert z._proc.returncode == -signal.SIGKILL
        with pytest.raises(RuntimeError, match="did not answer"):  # and it stays failed, at once
            z.status(1)
    finally:
        _kill(z.pid)
        z.close()


def test_a_zygote_killed_outright_takes_its_children_along(tmp_path: Path) -> None:
    """Each child dies with the zygote, however it dies (PR_SET_PDEATHSIG; before, it ran on as an orphan)."""
    z = zygote.Zygote(preload=())
    child = z.spawn("sleeper", [], _sleeper(tmp_path), cwd=tmp_path, process_group=True)
    grandchild = _started(tmp_path / "sleeper.log")
    try:
        os.kill(z.pid, signal.SIGKILL)
        wait_until(lambda: _gone(child.pid), 10, "the child to die with its zygote")
    finally:
        _kill(child.pid, grandchild)
        z.close()


@pytest.mark.parametrize("end", ["cancelled", "killed-while-forked"])
def test_when_the_run_ends_the_zygote_stops_with_what_its_children_started(tmp_path: Path, end: str) -> None:
    """``cancelled``: SIGTERM to the test process's group; the zygote kills its children's process groups,
    grandchildren included, and exits (before, it died at once and left a child in its own group running).
    ``killed-while-forked``: the test process is killed while a fork of it holds the zygote's pipe open, so no
    end of file comes; the zygote sees its parent gone (before, it waited on the pipe for ever)."""
    code = (
        "import os, sys, time, zygote\n"
        "z = zygote.Zygote(preload=())\n"
        f"p = z.spawn('sleeper', [], {str(_sleeper(tmp_path))!r}, cwd={str(tmp_path)!r}, process_group=True)\n"
        f"holder = os.fork() if {end == 'killed-while-forked'} else -1\n"
        "if holder == 0:\n"
        "    time.sleep(120)\n"
        "    os._exit(0)\n"
        "print(z.pid, p.pid, holder, flush=True)\n"
        "time.sleep(120)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(zygote.__file__).parent)}
    runner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env, start_new_session=True)
    assert runner.stdout is not None
    with runner.stdout:
        helper, child, holder = map(int, runner.stdout.readline().split())
    grandchild = _started(tmp_path / "sleeper.log")
    try:
        if end == "cancelled":
            os.killpg(runner.pid, signal.SIGTERM)
            assert runner.wait(10) == -signal.SIGTERM
        else:
            runner.kill()
            assert runner.wait(10) == -signal.SIGKILL
        wait_until(lambda: _gone(helper) and _gone(child) and _gone(grandchild), 10, "the zygote and its children")
    finally:
        _kill(helper, child, grandchild, *([holder] if holder > 0 else []))
