"""The discovered servers as plain data, and how one pod's workers share one Kubernetes watch.

The launcher's watch (``discovery.KubeDiscovery``) writes every change as a JSON snapshot, replaced whole; each
worker reads it when its ``stat`` changes (``SharedDiscovery``), told where by ``MCP_EXTPROC_DISCOVERY_FILE``. A
snapshot holds entries (plain strings), never compiled objects: a worker compiles the subjects itself.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType

from extproc.envoy.config import Server
from extproc.policy.compiler import compile_subjects
from extproc.policy.model import Subjects
from extproc.routing import Backend, Route

log = logging.getLogger(__name__)

DISCOVERY_FILE_ENV = "MCP_EXTPROC_DISCOVERY_FILE"  # set by the launcher for its workers: the shared snapshot
SNAPSHOT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Entry:
    """A labelled Service as plain data (what the launcher hands its workers); ``backend`` compiles it."""

    server: str
    name: str  # namespace/service
    upstream: str
    path: str
    users: tuple[str, ...] = ()
    groups: tuple[str, ...] = ()

    def backend(self) -> Backend:
        subjects = None
        if self.users or self.groups:
            subjects = compile_subjects(Subjects(users=list(self.users), groups=list(self.groups), claims=[]))
        return Backend(self.name, self.upstream, self.path, subjects)


def build_routes(entries: Iterable[tuple[str, Backend]], reserved: set[str]) -> dict[str, Route]:
    """Group backends by server name; scoped backends first (namespace/name order), then unscoped ones."""
    grouped: dict[str, list[Backend]] = {}
    for name, backend in entries:
        if name in reserved:
            continue  # gateway.yaml defines it: a labelled Service never takes over a configured server
        grouped.setdefault(name, []).append(backend)
    out = {}
    for name, backends in grouped.items():
        backends.sort(key=lambda b: (b.subjects is None, b.name))
        first = backends[0]
        out[name] = Route(Server(name=name, upstream=first.upstream, path=first.path), tuple(backends))
    return out


def routes_of(entries: Iterable[Entry], reserved: set[str]) -> dict[str, Route]:
    return build_routes(((e.server, e.backend()) for e in sorted(entries, key=lambda e: e.name)), reserved)


def write_snapshot(path: Path, entries: list[Entry]) -> None:
    """Replace the snapshot file whole (readers never see half of one)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"v": SNAPSHOT_VERSION, "entries": [asdict(e) for e in entries]}))
    os.replace(tmp, path)


def read_snapshot(path: Path) -> list[Entry]:
    """The entries of a snapshot file; ValueError when it is not one."""
    doc = json.loads(path.read_text())
    if not isinstance(doc, dict) or doc.get("v") != SNAPSHOT_VERSION or not isinstance(doc.get("entries"), list):
        raise ValueError(f"{path}: not a discovery snapshot of version {SNAPSHOT_VERSION}")
    try:
        return [
            Entry(e["server"], e["name"], e["upstream"], e["path"], tuple(e["users"]), tuple(e["groups"]))
            for e in doc["entries"]
        ]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path}: malformed entry ({e})") from None


class SharedDiscovery:
    """A worker's view of its launcher's watch: the snapshot file, read again whenever it changes (one ``stat``
    per ``poll_s``). A snapshot that cannot be read keeps the last good routes (logged)."""

    def __init__(self, path: Path, reserved: set[str], poll_s: float = 0.2) -> None:
        self.path = path
        self.reserved = reserved
        self.poll_s = poll_s
        self._routes: Mapping[str, Route] = MappingProxyType({})
        self._stamp: tuple[int, int, int] | None = None
        self.synced = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def routes(self) -> Mapping[str, Route]:
        return self._routes

    def start(self) -> None:
        self.check()
        self._thread = threading.Thread(target=self._run, name="kube-discovery-shared", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()

    def check(self) -> bool:
        """Read the snapshot if it changed; True when new routes were taken."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False  # the launcher has not listed yet
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return False
        try:
            routes = routes_of(read_snapshot(self.path), self.reserved)
        except (OSError, ValueError) as e:
            log.error("discovery snapshot unusable (%s); keeping the last known servers", e)
            return False
        self._stamp = stamp
        if set(routes) != set(self._routes):
            log.info("discovered MCP servers (from the launcher): %s", ", ".join(sorted(routes)) or "none")
        self._routes = MappingProxyType(routes)
        self.synced.set()
        return True
