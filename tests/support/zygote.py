"""Python helper processes for the tests, forked from one pre-imported parent instead of started cold.

A test that starts ``python -m extproc.demo.mcp_server ...`` or runs ``python -m extproc <command>`` pays about a
second of CPU before the program's first line runs: the imports (the MCP SDK, pydantic models, typer). Across the
suite that is hundreds of starts. Here one process per test process (per xdist worker), the zygote, imports those
modules once and forks a child per start; the child is a real, separate process that runs the module as ``-m``
would (``runpy``, ``__main__``, its own argv, environment, working directory, stdout/stderr), and exits with the
module's exit status. The zygote reaps its children and reports their status, so ``poll``/``wait`` behave as
``subprocess.Popen``'s do, and their CPU time counts as the test run's.

Nothing outlives the test process: an answer not given within ``ASK_TIMEOUT`` fails the request, saying so, and
the zygote is killed (a new one starts on next use). The zygote kills its children's process groups and exits when
its pipe closes, its parent dies, or on SIGTERM/SIGHUP (a cancelled run); a child dies with the zygote, however
that dies (Linux: PR_SET_PDEATHSIG). A killed pytest run leaves no sample server or processor running.

    proc = spawn("extproc.demo.mcp_server", ["--port", "8000"], log=path)   # Popen-like: poll, wait, terminate
    done = run("extproc", ["sessions", "list", "--json"], env=env, timeout=60)   # CompletedProcess[str]
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

PRELOAD = ("extproc.cli", "extproc.server", "extproc.audit.service", "extproc.demo.mcp_server")
ASK_TIMEOUT = 60.0  # seconds for any answer: a fork, a waitpid, a getrusage take milliseconds


class Zygote:
    """The parent side: one zygote process, asked over a pipe (one request, one reply, one line of JSON each)."""

    def __init__(self, preload: tuple[str, ...] = PRELOAD, timeout: float = ASK_TIMEOUT) -> None:
        code = f"import runpy; runpy.run_path({__file__!r}, run_name='__zygote__')"
        self._proc = subprocess.Popen(
            [sys.executable, "-c", code, *preload], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0
        )
        self._lock = threading.Lock()
        self._owner = os.getpid()
        self.timeout = timeout
        self.broken: str | None = None  # why this zygote was killed: every later request fails with it
        assert self._ask({"op": "ping"}, max(timeout, ASK_TIMEOUT)) == {"ok": True}  # after the imports: seconds

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _ask(self, request: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        wait = self.timeout if timeout is None else timeout
        with self._lock:
            if self.broken is not None:
                raise RuntimeError(self.broken)
            self._proc.stdin.write(json.dumps(request).encode() + b"\n")
            line = _read_line(self._proc.stdout.fileno(), time.monotonic() + wait)
            if line is None:  # hung (or stopped): a test waiting on it would hang with it
                self.broken = (
                    f"the test zygote (pid {self._proc.pid}) did not answer {request['op']!r} within {wait:g} s; "
                    "it was killed, and its children with it (MCP_TEST_ZYGOTE=0 starts helpers cold)"
                )
                self._proc.kill()
                self._proc.wait()
                raise RuntimeError(self.broken)
        if not line.endswith(b"\n"):
            raise RuntimeError(f"the test zygote exited with status {self._proc.wait()}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"the test zygote: {reply['error']}")
        return reply

    def spawn(self, module: str, args: list[str], stdout: Path | None, stderr: Path | None = None,
              env: dict[str, str] | None = None, process_group: bool = False,
              cwd: Path | None = None) -> ZygoteProcess:  # fmt: skip
        """``stdout``/``stderr`` None: the test process's stderr; ``process_group``: as Popen(process_group=0)."""
        request = {
            "op": "spawn",
            "module": module,
            "args": args,
            "stdout": None if stdout is None else str(stdout),
            "stderr": None if stdout is None else str(stderr or stdout),
            "process_group": process_group,
            "env": dict(os.environ if env is None else env),
            "cwd": str(cwd or os.getcwd()),
        }
        pid = int(self._ask(request)["pid"])
        return ZygoteProcess(self, pid, [sys.executable, "-m", module, *args])

    def status(self, pid: int) -> int | None:
        code = self._ask({"op": "poll", "pid": pid})["returncode"]
        return None if code is None else int(code)

    def cpu_seconds(self) -> float:
        """User + system CPU of every child the zygote has reaped so far (and of the zygote itself)."""
        return float(self._ask({"op": "cpu"})["seconds"])

    def close(self) -> None:
        if os.getpid() != self._owner:
            return
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.close()  # the zygote kills and reaps what is left, then exits
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc.stdout.close()


class ZygoteProcess:
    """A forked child, with the part of ``subprocess.Popen`` the tests use."""

    def __init__(self, zygote: Zygote, pid: int, args: list[str]) -> None:
        self._zygote, self.pid, self.args = zygote, pid, args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.002
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(delay)  # the zygote reaps on request: poll its status, backing off to 50 ms
            delay = min(delay * 2, 0.05)
        return code

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # not reaped yet, so the pid is still this child's
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _read_line(fd: int, deadline: float) -> bytes | None:
    """One reply line from the zygote's pipe (what it read if the pipe closed first); None past ``deadline``."""
    data = b""
    while not data.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


_zygote: Zygote | None = None


def zygote() -> Zygote:
    """This process's zygote, started on first use (again after one was killed) and stopped at exit."""
    global _zygote
    if _zygote is None or _zygote._owner != os.getpid() or _zygote.broken is not None:
        _zygote = Zygote()
        atexit.register(_zygote.close)
    return _zygote


def close() -> None:
    """Stop this process's zygote, if it started one (the end of a test session)."""
    global _zygote
    if _zygote is not None and _zygote._owner == os.getpid():
        _zygote.close()
    _zygote = None


def _cold() -> bool:
    """``MCP_TEST_ZYGOTE=0``: start every helper cold, with subprocess (to compare, or to rule the zygote out)."""
    return os.environ.get("MCP_TEST_ZYGOTE") == "0"


def spawn(
    module: str, args: list[str], log: Path, env: dict[str, str] | None = None
) -> ZygoteProcess | subprocess.Popen[bytes]:
    """``python -m module *args`` with stdout and stderr appended to ``log``, forked from the zygote."""
    if _cold():
        with log.open("ab") as out:
            return subprocess.Popen([sys.executable, "-m", module, *args], stdout=out, stderr=out, env=env)
    return zygote().spawn(module, args, log, env=env)


def run(module: str, args: list[str], env: dict[str, str] | None = None, timeout: float = 60, cwd: Path | None = None,
        ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """As ``subprocess.run([python, "-m", module, *args], capture_output=True, text=True, timeout=...)``."""
    if _cold():
        cmd = [sys.executable, "-m", module, *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    with tempfile.TemporaryDirectory(prefix="zygote-") as tmp:
        out, err = Path(tmp) / "stdout", Path(tmp) / "stderr"
        proc = zygote().spawn(module, args, out, err, env=env, cwd=cwd)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        return subprocess.CompletedProcess(
            proc.args, code, out.read_text(errors="replace"), err.read_text(errors="replace")
        )


def run_command(cmd: list[str], timeout: float = 60, env: dict[str, str] | None = None, cwd: Path | None = None,
                ) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """``subprocess.run(cmd, capture_output=True, text=True, ...)``, forked when ``cmd`` is ``python -m module``."""
    if cmd[:2] == [sys.executable, "-m"]:
        return run(cmd[2], cmd[3:], env=env, timeout=timeout, cwd=cwd)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)


# ---- the zygote process itself ----------------------------------------------------------------------------------


def _die_with_parent(sig: int) -> None:
    """Linux: this process gets ``sig`` when the one that forked it dies (PR_SET_PDEATHSIG); elsewhere nothing."""
    if sys.platform != "linux":
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(1, sig, 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")


def _child(request: dict[str, Any], control: tuple[int, int], zygote_pid: int) -> None:
    """In the forked child: become ``python -m module *args`` and exit with its status (never returns)."""
    import io
    import random
    import runpy
    import traceback
    import warnings

    code = 1
    try:
        _die_with_parent(signal.SIGKILL)
        if os.getppid() != zygote_pid:  # the zygote died before the line above: nobody to report to
            os._exit(1)
        for fd in control:
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if request["process_group"]:
            os.setpgid(0, 0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        if request["stdout"] is not None:
            out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, 1)
            os.dup2(err, 2)
            for fd in {out, err}:
                os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        # Python chose the streams' buffering at the zygote's start; choose again as this child's start would.
        unbuffered = bool(os.environ.get("PYTHONUNBUFFERED"))
        sys.stdout = sys.__stdout__ = io.TextIOWrapper(
            io.FileIO(1, "w", closefd=False) if unbuffered else io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
            encoding=sys.stdout.encoding,
            errors=sys.stdout.errors,
            write_through=unbuffered,
        )
        sys.stderr = sys.__stderr__ = io.TextIOWrapper(
            io.FileIO(2, "w", closefd=False) if unbuffered else io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
            encoding=sys.stderr.encoding,
            errors="backslashreplace",
            line_buffering=True,
            write_through=unbuffered,
        )
        sys.path[0] = os.getcwd()  # as `python -m` sets it
        sys.argv = [request["module"], *request["args"]]
        random.seed()  # not the zygote's sequence
        # runpy warns when the module was imported before (here: preloaded); `python -m` would not have.
        warnings.filterwarnings("ignore", r".* found in sys\.modules after import of package", RuntimeWarning)
        runpy.run_module(request["module"], run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            code = e.code or 0
        else:
            print(e.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 128 + signal.SIGINT
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _serve(preload: list[str]) -> None:
    """Import ``preload``, then answer requests on stdin until it closes."""
    import importlib
    import resource

    parent = os.getppid()  # (not PR_SET_PDEATHSIG here: it fires when the *thread* that started the zygote ends)

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    control = (os.dup(0), os.dup(1))  # the pipes to the parent, off fds 0 and 1 (children get their own)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(2, 1)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the test process; it closes the pipe
    for name in preload:
        importlib.import_module(name)
    # Forking a process with threads (Python's or a C library's) could copy a lock another thread holds.
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else threading.active_count()
    if threads != 1:
        raise RuntimeError(f"importing {preload} started threads: {threads}")
    reader = os.fdopen(control[0], "rb", buffering=0)
    children: dict[int, int | None] = {}
    groups: set[int] = set()  # children that lead a process group of their own (what they start is in it)

    def reply(obj: dict[str, Any]) -> None:
        os.write(control[1], json.dumps(obj).encode() + b"\n")

    def reap(pid: int) -> int | None:
        if children.get(pid) is None:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children[pid] = os.waitstatus_to_exitcode(status)
        return children[pid]

    zygote_pid = os.getpid()
    try:
        while True:
            if not select.select([reader], [], [], 1.0)[0]:
                if os.getppid() != parent:  # the test process died and something else holds the pipe open
                    break
                continue
            line = reader.readline()
            if not line:
                break
            request = json.loads(line)
            try:
                if request["op"] == "ping":
                    reply({"ok": True})
                elif request["op"] == "spawn":
                    pid = os.fork()
                    if pid == 0:
                        _child(request, control, zygote_pid)
                    children[pid] = None
                    if request["process_group"]:
                        groups.add(pid)
                    reply({"pid": pid})
                elif request["op"] == "cpu":
                    me, reaped = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
                    reply({"seconds": me.ru_utime + me.ru_stime + reaped.ru_utime + reaped.ru_stime})
                elif request["op"] == "poll":
                    reply({"returncode": reap(int(request["pid"]))})
                else:
                    reply({"error": f"unknown op {request['op']!r}"})
            except Exception as e:
                reply({"error": repr(e)})
    finally:  # the parent is gone (or sent a stop): stop what it left running, with what those started
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        for pid, code in children.items():
            if code is None:  # not reaped: the pid (and its group's id) is still this child's
                try:
                    os.killpg(pid, signal.SIGKILL) if pid in groups else os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                os.waitpid(pid, 0)


if __name__ == "__zygote__":
    _serve(sys.argv[1:])
