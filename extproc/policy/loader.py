"""Load a directory of policy files into one CompiledPolicy, and keep it fresh with PolicyWatcher.

Every problem is reported as ``file:line: message`` (lines come from the YAML nodes, not from guessing) and all
problems of a load are raised together in one ConfigError. The watcher never lets a bad edit through: the last
good policy stays in force, the failure is logged with its reason and counted in ``reload_failures``.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import hashlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from extproc.errors import ConfigError
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.compiler import LoadedFile, compile_policy
from extproc.policy.model import ALL_KEYS, API_VERSION, PolicyFile
from extproc.tasks import cancel
from extproc.yamlfile import did_you_mean, line_of, parse_yaml

log = logging.getLogger(__name__)

TEST_SUFFIX = ".tests.yaml"
M = TypeVar("M", bound=BaseModel)


def policy_files(directory: str | Path) -> list[Path]:
    """The policy files of a directory: ``*.yaml``, not dot-files (ConfigMap internals), not ``*.tests.yaml``."""
    return [p for p in _yaml_files(directory) if not p.name.endswith(TEST_SUFFIX)]


def case_files(directory: str | Path) -> list[Path]:
    """The policy test files of a directory (``*.tests.yaml``)."""
    return [p for p in _yaml_files(directory) if p.name.endswith(TEST_SUFFIX)]


def _yaml_files(directory: str | Path) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"{d}: not a directory")
    # is_file() follows symlinks, so a ConfigMap's "x.yaml -> ..data/x.yaml" counts and "..data" does not.
    return sorted(p for p in d.iterdir() if p.name.endswith(".yaml") and not p.name.startswith(".") and p.is_file())


def load_policy(directory: str | Path, known_servers: set[str] | None = None) -> CompiledPolicy:
    """Read, validate and compile every policy file of ``directory``; raises ConfigError with all problems."""
    paths = policy_files(directory)
    if not paths:
        raise ConfigError(f"{directory}: no policy files (*.yaml)")
    contents = [(p, read_stable(p)) for p in paths]  # FileChanging when one is being written: nothing compiled
    loaded: list[LoadedFile] = []
    errors: list[str] = []
    salvaged: list[LoadedFile] = []
    for path, data in contents:
        try:
            doc, lines = parse_yaml(data, str(path))
        except ConfigError as e:
            errors.extend(str(e).splitlines())
            continue
        try:
            loaded.append(LoadedFile(str(path), validate(PolicyFile, doc, str(path), lines), lines))
        except ConfigError as e:
            errors.extend(str(e).splitlines())
            if (partial := _salvage(doc, lines, str(path))) is not None:
                salvaged.append(partial)
    digest = _digest([(p.name, d) for p, d in contents])
    policy: CompiledPolicy | None = None
    try:
        policy = compile_policy(loaded + salvaged, known_servers, fingerprint=digest)
    except ConfigError as e:  # cross-file problems (names, servers), also of the valid parts of invalid files
        errors.extend(str(e).splitlines())
    if policy is None or errors or salvaged:
        raise ConfigError("\n".join(dict.fromkeys(errors)))  # once each, in the order found
    return policy


_SECTIONS = ("rules", "recording", "viewers")


def _salvage(doc: Any, lines: dict[tuple[str, ...], int], path: str) -> LoadedFile | None:
    """The items of an invalid file that are valid on their own, renumbered, so the cross-file checks (unique
    names, known servers) run on them too and one ``policy check`` reports every problem. Never installed."""
    if not isinstance(doc, dict):
        return None
    kept: dict[str, Any] = {"apiVersion": API_VERSION}
    new_lines = {k: v for k, v in lines.items() if not k or k[0] not in _SECTIONS}
    for section in _SECTIONS:
        items = doc.get(section)
        if not isinstance(items, list):
            continue
        good: list[Any] = []
        for i, item in enumerate(items):
            try:
                PolicyFile.model_validate({"apiVersion": API_VERSION, section: [item]})
            except ValidationError:
                continue
            for k, v in lines.items():
                if k[:2] == (section, str(i)):
                    new_lines[(section, str(len(good)), *k[2:])] = v
            good.append(item)
        kept[section] = good
    try:
        return LoadedFile(path, PolicyFile.model_validate(kept), new_lines)
    except ValidationError:
        return None


def fingerprint(directory: str | Path) -> str:
    """A hash of the policy files' names and contents (through symlinks), to notice any edit or swap."""
    return _digest([(p.name, _read(p)) for p in policy_files(directory)])


def _digest(items: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, data in items:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e


class FileChanging(ConfigError):
    """A policy file was being written while it was read: never compiled; the watcher looks again later."""


Reader = Callable[[int], bytes]


def _read_fd(fd: int) -> bytes:
    chunks: list[bytes] = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def read_stable(path: Path, reader: Reader = _read_fd) -> bytes:
    """The bytes of a file that no process holds open for writing and that read to the same bytes twice.

    A settle time alone cannot tell a finished file from a writer paused between two halves (the half can be a
    valid policy with rules missing), so each read first asks the kernel whether the file is open for writing
    anywhere (a read lease is refused then), and compares size, mtime_ns and inode before and after each read
    and the bytes of two reads. Raises FileChanging when any of these moves, ConfigError when unreadable.
    """
    try:
        first, stat1 = _read_once(path, reader)
        second, stat2 = _read_once(path, reader)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    if first != second or stat1 != stat2:
        raise FileChanging(f"{path}: changed while it was read; not compiled, will look again")
    return first


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def _read_once(path: Path, reader: Reader) -> tuple[bytes, tuple[int, int, int, int]]:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        before = _identity(os.fstat(fd))
        if _open_for_writing(fd):
            raise FileChanging(f"{path}: open for writing by a process; not compiled until it is closed")
        data = reader(fd)
        after = _identity(os.fstat(fd))
        if before != after or _identity(os.stat(path)) != after:  # written to, or replaced, during the read
            raise FileChanging(f"{path}: changed while it was read; not compiled, will look again")
        return data, after
    finally:
        os.close(fd)


def _open_for_writing(fd: int) -> bool:
    """True when some process has the file open for writing (Linux refuses a read lease then).

    The lease is released at once. Should a writer open the file in that instant, the kernel signals the lease
    holder: the signal is set to SIGURG (ignored by default) so it cannot end the process, as SIGIO would.
    Where leases are unavailable (a file owned by another user, a filesystem without them) this answers False
    and the double read and stat comparison are the only defence; write policy files atomically.
    """
    try:
        fcntl.fcntl(fd, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as e:
        return e.errno in (errno.EAGAIN, errno.EBUSY)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def validate(model: type[M], doc: Any, source: str, lines: dict[tuple[str, ...], int]) -> M:
    """Validate a parsed document against ``model``; raises ConfigError with ``file:line: message`` lines."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}:1: expected a mapping at the top level (apiVersion: mcp-extproc/v1, ...)")
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        messages: dict[str, None] = {}  # ordered set: union members may repeat a message
        for err in e.errors():
            loc = tuple(str(p) for p in err["loc"])
            line = line_of(lines, loc)
            messages[f"{source}:{line}: {_where(err['loc'], doc)}{_plain(err)}"] = None
        raise ConfigError("\n".join(sorted(messages, key=_line_of))) from None


def _line_of(message: str) -> int:
    parts = message.split(":")
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else 0


def _where(loc: tuple[int | str, ...], doc: dict[str, Any]) -> str:
    """The "rule 'x': targets.tools[2]: " prefix for an error location, naming the rule or viewer."""
    head, rest = "", list(loc)
    if len(loc) >= 2 and loc[0] in ("rules", "viewers") and isinstance(loc[1], int):
        items = doc.get(str(loc[0]))
        item = items[loc[1]] if isinstance(items, list) and loc[1] < len(items) else None
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            head, rest = f"{'rule' if loc[0] == 'rules' else 'viewer'} {item['name']!r}: ", rest[2:]
    if rest and not isinstance(rest[-1], int):
        rest.pop()  # _plain names the last key itself
    text = ""
    for p in rest:
        text += f"[{p}]" if isinstance(p, int) else (f".{p}" if text else str(p))
    return head + (f"{text}: " if text else "")


def _plain(err: Any) -> str:
    key = str(err["loc"][-1]) if err["loc"] else ""
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {key!r}{did_you_mean(key, ALL_KEYS)}"
    if kind == "missing":
        return f"missing required key {key!r}"
    if kind == "literal_error":
        return f"{key}: must be {err['ctx']['expected']}, not {err['input']!r}"
    msg = str(err["msg"]).removeprefix("Value error, ").replace("Input should be", "must be")
    if key and not key.isdigit():
        return f"{key}: {msg}"
    return msg


class PolicyWatcher:
    """Polls a policy directory and swaps ``current`` on a valid change; a bad edit keeps the last good policy.

    Change detection hashes the contents of the resolved files, so a Kubernetes ConfigMap update (an atomic
    swap of the ``..data`` symlink to a new timestamped directory) is seen even though no file's mtime moves.
    The polling runs in a thread of its own and wakes the event loop only when the fingerprint differs from the
    version in force: an unchanged directory costs one short thread wake-up per interval and nothing on the
    loop that carries the traffic (each loop wake-up and thread hop costs far more CPU than the hashing).
    """

    def __init__(
        self,
        directory: str | Path,
        known_servers: set[str] | None = None,
        *,
        interval: float = 1.0,
        on_change: Callable[[CompiledPolicy], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.known_servers = known_servers
        self.interval = interval
        self.on_change = on_change
        self.current: CompiledPolicy = load_policy(self.directory, known_servers)  # startup: a bad policy is fatal
        self.reloads = 0
        self.reload_failures = 0
        self.last_error: str | None = None
        self._seen: str | None = self.current.fingerprint
        self.settle = min(interval / 2, 0.25)  # how long a changed version must stay unchanged to be loaded
        self._task: asyncio.Task[None] | None = None
        self._stop = threading.Event()

    async def start(self) -> None:
        """Start polling: a daemon thread looks, a task on the loop loads what it found changed."""
        if self._task is None:
            wake = asyncio.Event()
            self._stop = threading.Event()
            loop = asyncio.get_running_loop()
            threading.Thread(target=self._poll, args=(loop, wake, self._stop), name="policy-poll", daemon=True).start()
            self._task = asyncio.create_task(self._run(wake), name="policy-watcher")

    async def close(self) -> None:
        """Stop polling (the thread ends at its next look, at most one interval later, and never wakes the loop)."""
        self._stop.set()
        task, self._task = self._task, None
        await cancel(task)

    async def _fingerprint(self) -> str:
        try:
            return await asyncio.to_thread(fingerprint, self.directory)
        except ConfigError as e:
            return f"unreadable: {e}"

    async def check(self) -> bool:
        """Look once for a change; returns True if a new policy was installed."""
        seen = await self._fingerprint()
        if seen == self._seen:
            return False
        # A file being written (a copy, an editor saving in place) reads as a prefix, and a prefix that ends
        # between two rules is a valid policy with rules missing. Load a version only once it has stayed the same
        # for a moment, and only if what was loaded is that version (found by bench/faults/policy_reload.py).
        await asyncio.sleep(self.settle)
        if await self._fingerprint() != seen:
            return False  # still changing: look again next round
        self._seen = seen  # remember even a bad version, so one bad edit is counted (and logged) once
        try:
            policy = await asyncio.to_thread(load_policy, self.directory, self.known_servers)
            if policy.fingerprint != seen:
                self._seen = None  # changed again while loading: not this version; look again next round
                return False
        except FileChanging as e:  # being written: not a bad policy, just not finished; look again next round
            self._seen = None
            log.info("policy reload postponed: %s", e)
            return False
        except Exception as e:
            self.reload_failures += 1
            self.last_error = str(e)
            log.error("policy reload rejected, keeping the last good policy:\n%s", e)
            return False
        self._seen = policy.fingerprint
        self.current = policy
        self.reloads += 1
        self.last_error = None
        log.info("policy reloaded from %s: %d rules", self.directory, len(policy.rules))
        if self.on_change is not None:
            self.on_change(policy)
        return True

    def _poll(self, loop: asyncio.AbstractEventLoop, wake: asyncio.Event, stop: threading.Event) -> None:
        """Thread: every interval, wake the loop if the directory differs from the version last seen there."""
        while not stop.wait(self.interval):
            try:
                seen = fingerprint(self.directory)
            except ConfigError as e:
                seen = f"unreadable: {e}"
            except Exception:  # the poller must outlive any surprise; the loop's check reports it
                seen = ""
            if seen != self._seen and not stop.is_set():
                try:
                    loop.call_soon_threadsafe(wake.set)
                except RuntimeError:  # the loop is closed: nothing left to wake
                    return

    async def _run(self, wake: asyncio.Event) -> None:
        while True:
            await wake.wait()
            wake.clear()
            try:
                await self.check()  # settles, loads and installs (or looks again at the poller's next wake-up)
            except Exception:  # the watcher must outlive any surprise; the policy in force is untouched
                log.exception("policy watcher check failed")
