"""Servers discovered from Kubernetes Services, kept current with a list + watch (official ``kubernetes`` client).

A Service labelled ``mcp-extproc.io/server: <name>`` is a backend of server ``<name>``, reached at its clusterIP
and port (annotations: path, port, and optional groups/users that scope it). Several Services may serve one name
(one per team namespace, say): scoped ones are tried first, in namespace/name order.

The watch resumes from the last resourceVersion it saw (events and BOOKMARKs), re-lists on 410 Gone, and retries
when the API server is away. While it is away nothing is dropped: routing keeps the last known set (the policy
still decides every call). The snapshot ``routes`` is replaced whole, so the event loop reads it without locks.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any

from pydantic import ValidationError

from extproc.envoy.config import Server
from extproc.kube.config import (
    ANNOTATION_GROUPS,
    ANNOTATION_PATH,
    ANNOTATION_PORT,
    ANNOTATION_USERS,
    LABEL,
    KubernetesDiscovery,
    api_client,
)
from extproc.policy.compiled import compile_subjects
from extproc.policy.model import Subjects
from extproc.routing import Backend, Route
from extproc.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, service name)


def backend_of(svc: Any) -> tuple[str, Backend]:
    """(server name, backend) for a labelled Service; ValueError saying what is wrong with it."""
    meta, spec = svc.metadata, svc.spec
    labels, ann = meta.labels or {}, meta.annotations or {}
    where = f"Service {meta.namespace}/{meta.name}"
    name = labels.get(LABEL, "")
    ip = spec.cluster_ip if spec is not None else None
    if not ip or ip == "None":
        raise ValueError(f"{where}: no clusterIP (headless Services are not supported)")
    ports = (spec.ports or []) if spec is not None else []
    wanted = ann.get(ANNOTATION_PORT)
    port = next((p.port for p in ports if wanted is None or wanted in (p.name, str(p.port))), None)
    if port is None:
        raise ValueError(f"{where}: no port {wanted!r}" if wanted else f"{where}: no ports")
    users = [u.strip() for u in ann.get(ANNOTATION_USERS, "").split(",") if u.strip()]
    groups = [g.strip() for g in ann.get(ANNOTATION_GROUPS, "").split(",") if g.strip()]
    path = ann.get(ANNOTATION_PATH, "/mcp")
    try:
        server = Server(name=name, upstream=f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}", path=path)
        subjects = compile_subjects(Subjects(users=users, groups=groups, claims=[])) if users or groups else None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'labels'}: {x['msg']}" for x in e.errors())
        raise ValueError(f"{where}: {problems}") from None
    assert server.upstream is not None
    return server.name, Backend(f"{meta.namespace}/{meta.name}", server.upstream, server.path, subjects)


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


class KubeDiscovery:
    """Watches labelled Services in the configured namespaces; ``routes`` is the current snapshot."""

    def __init__(self, cfg: KubernetesDiscovery, reserved: set[str], api: Any = None) -> None:
        from kubernetes import client

        self.cfg = cfg
        self.reserved = reserved
        self.core = client.CoreV1Api(api if api is not None else api_client(cfg))
        self._routes: Mapping[str, Route] = MappingProxyType({})
        self._entries: dict[Key, tuple[str, Backend]] = {}
        self.problems: dict[Key, str] = {}  # Services we could not use, and why (their last good entry stays)
        self.lists = 0  # full lists done (start-up, 410 Gone, watch failures)
        self.connected = False
        self.synced = threading.Event()  # every namespace listed once
        self._unsynced: set[str | None] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[Any] = []

    @property
    def routes(self) -> Mapping[str, Route]:
        return self._routes

    def start(self) -> None:
        """One watcher thread per namespace (one for all namespaces when none are listed)."""
        namespaces: list[str | None] = [*self.cfg.namespaces] or [None]
        self._unsynced = set(namespaces)
        for ns in namespaces:
            t = threading.Thread(target=self._run, args=(ns,), name=f"kube-discovery-{ns or 'all'}", daemon=True)
            t.start()
            self._threads.append(t)

    def close(self) -> None:
        """Stop watching (threads end at their next event or timeout; they are daemons)."""
        self._stop.set()
        for w in list(self._watches):
            w.stop()

    # --- the watch loop (one thread per namespace) -----------------------------------------------------------

    def _list_call(self, ns: str | None) -> tuple[Callable[..., Any], tuple[str, ...]]:
        # The function itself (not a wrapper): Watch finds the type to decode events into from its docstring.
        if ns is None:
            return self.core.list_service_for_all_namespaces, ()
        return self.core.list_namespaced_service, (ns,)

    def _run(self, ns: str | None) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        (list_fn, args), rv = self._list_call(ns), None
        timeout = self.cfg.request_timeout_s
        while not self._stop.is_set():
            try:
                if rv is None:
                    listed = list_fn(*args, label_selector=self.cfg.label_selector, _request_timeout=timeout)
                    self._replace(ns, listed.items)
                    rv = listed.metadata.resource_version
                    self.lists += 1
                    self.connected = True
                    self._unsynced.discard(ns)
                    if not self._unsynced:
                        self.synced.set()
                w = watch.Watch()
                self._watches.append(w)
                try:
                    for event in w.stream(
                        list_fn,
                        *args,
                        label_selector=self.cfg.label_selector,
                        resource_version=rv,
                        allow_watch_bookmarks=True,
                        timeout_seconds=self.cfg.watch_timeout_s,
                        _request_timeout=(timeout, self.cfg.watch_timeout_s + timeout),
                    ):
                        self._apply(event["type"], event["object"])
                        self.connected = True
                finally:
                    self._watches.remove(w)
                rv = w.resource_version or rv  # the last event or BOOKMARK: resume from there
            except ApiException as e:
                if e.status == 410:
                    log.info("kubernetes watch of %s: resourceVersion %s expired (410 Gone); re-listing", ns, rv)
                    rv = None
                    continue
                self._away(ns, f"API error {e.status} {e.reason}")
            except Exception as e:  # connection refused, reset, timed out: keep the last known set
                self._away(ns, f"{type(e).__name__}: {e}")

    def _away(self, ns: str | None, why: str) -> None:
        if self.connected:
            log.warning("kubernetes API unavailable for %s (%s); keeping the last known servers", ns or "all", why)
        self.connected = False
        self._stop.wait(self.cfg.retry_s)

    # --- state -------------------------------------------------------------------------------------------------

    def _apply(self, kind: str, svc: Any) -> None:
        if kind in ("ADDED", "MODIFIED"):
            with self._lock:
                self._put(svc)
                self._publish()
        elif kind == "DELETED":
            key = (svc.metadata.namespace, svc.metadata.name)
            with self._lock:
                self._entries.pop(key, None)
                self.problems.pop(key, None)
                self._publish()

    def _replace(self, ns: str | None, items: list[Any]) -> None:
        with self._lock:
            for key in [k for k in self._entries if ns is None or k[0] == ns]:
                del self._entries[key]
            for svc in items:
                self._put(svc)
            self._publish()

    def _put(self, svc: Any) -> None:
        key = (svc.metadata.namespace, svc.metadata.name)
        try:
            self._entries[key] = backend_of(svc)
            self.problems.pop(key, None)
        except ValueError as e:
            self.problems[key] = str(e)
            log.error("ignoring %s%s", e, " (its last good entry stays)" if key in self._entries else "")

    def _publish(self) -> None:
        routes = build_routes(sorted(self._entries.values(), key=lambda e: e[1].name), self.reserved)
        if set(routes) != set(self._routes):
            log.info("discovered MCP servers: %s", ", ".join(sorted(routes)) or "none")
        self._routes = MappingProxyType(routes)


async def start_discovery(settings: Settings) -> KubeDiscovery | None:
    """Start watching when ``discovery.kubernetes`` is set; waits briefly for the first list (empty until then)."""
    import asyncio

    cfg = settings.discovery.kubernetes if settings.discovery is not None else None
    if cfg is None:
        return None
    d = KubeDiscovery(cfg, reserved={s.name for s in settings.servers})
    d.start()
    if not await asyncio.to_thread(d.synced.wait, cfg.request_timeout_s):
        log.warning("kubernetes discovery: no first list yet; serving gateway.yaml servers only until it arrives")
    return d
