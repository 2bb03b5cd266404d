"""Servers discovered from Kubernetes Services and their EndpointSlices, kept current with list + watch (official
``kubernetes`` client).

A Service labelled ``mcp-extproc.io/server: <name>`` is a backend of server ``<name>``, reached at its clusterIP
and port (annotations: path, port, and optional groups/users that scope it), **while its EndpointSlices
(discovery.k8s.io/v1) list at least one ready endpoint**: a Service whose pods are all unready (or gone) is
withdrawn from routing until one is ready again, so its traffic goes to another backend of the same name or gets
a clear 404 instead of a connect timeout. Traffic still goes through the clusterIP: kube-proxy spreads connections
over the same ready endpoints and Envoy's connection reuse stays per Service. EndpointSlices are watched with the
same label selector: the EndpointSlice controller copies a Service's labels onto its slices (a Service without a
selector needs slices written with that label by their owner). A missing ``ready`` condition counts as ready, as
the API documents. Several Services may serve one name (one per team namespace, say): scoped ones are tried
first, in namespace/name order.

The watch resumes from the last resourceVersion it saw (events and BOOKMARKs), re-lists on 410 Gone, and retries
when the API server is away. While it is away nothing is dropped: routing keeps the last known set (the policy
still decides every call). The snapshot ``routes`` is replaced whole, so the event loop reads it without locks.

One watch per pod: with several workers, the launcher (``serve --workers``, ``Stack``) runs the watch and writes
every change as a JSON snapshot file (atomically replaced); each worker reads it when it changes
(``SharedDiscovery``, told where by ``MCP_EXTPROC_DISCOVERY_FILE``). A pod costs the API server two watches
(Services, EndpointSlices; per namespace when namespaces are listed), whatever its number of workers.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

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
from extproc.kube.snapshot import DISCOVERY_FILE_ENV, Entry, SharedDiscovery, routes_of, write_snapshot
from extproc.routing import Backend, Route
from extproc.settings import Settings

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, service name)
Resource = Literal["services", "slices"]
SERVICE_NAME_LABEL = "kubernetes.io/service-name"  # on an EndpointSlice: the Service it belongs to


def entry_of(svc: Any) -> Entry:
    """The entry of a labelled Service; ValueError saying what is wrong with it."""
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
        entry = Entry(server.name, f"{meta.namespace}/{meta.name}", server.upstream or "", server.path,
                      tuple(users), tuple(groups))  # fmt: skip
        entry.backend()  # the subjects compile
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'labels'}: {x['msg']}" for x in e.errors())
        raise ValueError(f"{where}: {problems}") from None
    return entry


def backend_of(svc: Any) -> tuple[str, Backend]:
    """(server name, backend) for a labelled Service; ValueError saying what is wrong with it."""
    entry = entry_of(svc)
    return entry.server, entry.backend()


def ready_endpoints(eps: Any) -> int:
    """Ready endpoints of one EndpointSlice (``conditions.ready`` unset counts as ready, as the API says)."""
    n = 0
    for ep in eps.endpoints or []:
        ready = ep.conditions.ready if ep.conditions is not None else None
        if ready is None or ready:
            n += 1
    return n


class KubeDiscovery:
    """Watches labelled Services and their EndpointSlices in the configured namespaces; ``routes`` is the current
    snapshot of the Services with a ready endpoint. ``on_change`` (the launcher's snapshot writer) gets every
    routable entry after each change."""

    def __init__(
        self,
        cfg: KubernetesDiscovery,
        reserved: set[str],
        api: Any = None,
        on_change: Callable[[list[Entry]], None] | None = None,
    ) -> None:
        from kubernetes import client

        self.cfg = cfg
        self.reserved = reserved
        self.on_change = on_change
        api = api if api is not None else api_client(cfg)
        self.core = client.CoreV1Api(api)
        self.slices_api = client.DiscoveryV1Api(api)
        self._routes: Mapping[str, Route] = MappingProxyType({})
        self._entries: dict[Key, Entry] = {}
        self._ready: dict[Key, tuple[Key, int]] = {}  # EndpointSlice -> (its Service, ready endpoints)
        self.unready: set[Key] = set()  # labelled Services withdrawn: no ready endpoint
        self.problems: dict[Key, str] = {}  # Services we could not use, and why (their last good entry stays)
        self.lists = 0  # full lists done (start-up, 410 Gone, watch failures), both resources
        self.connected = False
        self.synced = threading.Event()  # every namespace listed once, both resources
        self._complete = False  # both resources listed: routes may be published
        self._unsynced: set[tuple[Resource, str | None]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watches: list[Any] = []

    @property
    def routes(self) -> Mapping[str, Route]:
        return self._routes

    def start(self) -> None:
        """Two watcher threads (Services, EndpointSlices) per namespace (for all namespaces when none are listed)."""
        namespaces: list[str | None] = [*self.cfg.namespaces] or [None]
        resources: tuple[Resource, ...] = ("services", "slices")
        self._unsynced = {(r, ns) for r in resources for ns in namespaces}
        for resource in resources:
            for ns in namespaces:
                t = threading.Thread(
                    target=self._run, args=(resource, ns), name=f"kube-{resource}-{ns or 'all'}", daemon=True
                )
                t.start()
                self._threads.append(t)

    def close(self) -> None:
        """Stop watching (threads end at their next event or timeout; they are daemons)."""
        self._stop.set()
        for w in list(self._watches):
            w.stop()

    # --- the watch loop (one thread per resource and namespace) ----------------------------------------------

    def _list_call(self, resource: Resource, ns: str | None) -> tuple[Callable[..., Any], tuple[str, ...]]:
        # The function itself (not a wrapper): Watch finds the type to decode events into from its docstring.
        if resource == "slices":
            if ns is None:
                return self.slices_api.list_endpoint_slice_for_all_namespaces, ()
            return self.slices_api.list_namespaced_endpoint_slice, (ns,)
        if ns is None:
            return self.core.list_service_for_all_namespaces, ()
        return self.core.list_namespaced_service, (ns,)

    def _run(self, resource: Resource, ns: str | None) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException

        (list_fn, args), rv = self._list_call(resource, ns), None
        timeout = self.cfg.request_timeout_s
        while not self._stop.is_set():
            try:
                if rv is None:
                    listed = list_fn(*args, label_selector=self.cfg.label_selector, _request_timeout=timeout)
                    self._replace(resource, ns, listed.items)
                    rv = listed.metadata.resource_version
                    self.lists += 1
                    self.connected = True
                    with self._lock:
                        self._unsynced.discard((resource, ns))
                        if not self._unsynced and not self._complete:
                            self._complete = True
                            self._publish()  # the first whole picture: Services and their endpoints
                            self.synced.set()  # after it: whoever waits on it reads the routes
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
                        self._apply(resource, event["type"], event["object"])
                        self.connected = True
                finally:
                    self._watches.remove(w)
                rv = w.resource_version or rv  # the last event or BOOKMARK: resume from there
            except ApiException as e:
                if e.status == 410:
                    log.info("kubernetes watch of %s in %s: resourceVersion %s expired (410 Gone); re-listing",
                             resource, ns, rv)  # fmt: skip
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

    def _apply(self, resource: Resource, kind: str, obj: Any) -> None:
        if kind not in ("ADDED", "MODIFIED", "DELETED"):
            return
        key = (obj.metadata.namespace, obj.metadata.name)
        with self._lock:
            if kind == "DELETED":
                if resource == "slices":
                    self._ready.pop(key, None)
                else:
                    self._entries.pop(key, None)
                    self.problems.pop(key, None)
            elif resource == "slices":
                self._put_slice(obj)
            else:
                self._put(obj)
            self._publish()

    def _replace(self, resource: Resource, ns: str | None, items: list[Any]) -> None:
        with self._lock:
            held: dict[Key, Any] = self._ready if resource == "slices" else self._entries
            for key in [k for k in held if ns is None or k[0] == ns]:
                del held[key]
            for obj in items:
                self._put_slice(obj) if resource == "slices" else self._put(obj)
            self._publish()

    def _put(self, svc: Any) -> None:
        key = (svc.metadata.namespace, svc.metadata.name)
        try:
            self._entries[key] = entry_of(svc)
            self.problems.pop(key, None)
        except ValueError as e:
            self.problems[key] = str(e)
            log.error("ignoring %s%s", e, " (its last good entry stays)" if key in self._entries else "")

    def _put_slice(self, eps: Any) -> None:
        service = (eps.metadata.labels or {}).get(SERVICE_NAME_LABEL)
        if service:
            self._ready[(eps.metadata.namespace, eps.metadata.name)] = (
                (eps.metadata.namespace, service),
                ready_endpoints(eps),
            )

    def _publish(self) -> None:
        if not self._complete:
            return  # Services listed before their EndpointSlices would all look unready for a moment
        ready: dict[Key, int] = {}
        for service, n in self._ready.values():
            ready[service] = ready.get(service, 0) + n
        routable = [e for key, e in self._entries.items() if ready.get(key, 0) > 0]
        unready = {key for key in self._entries if ready.get(key, 0) == 0}
        for key in sorted(unready - self.unready):
            log.warning("Service %s/%s has no ready endpoint: withdrawn from routing until one is ready", *key)
        for key in sorted(self.unready - unready):
            if key in self._entries:
                log.info("Service %s/%s has a ready endpoint again: routed", *key)
        self.unready = unready
        routes = routes_of(routable, self.reserved)
        if set(routes) != set(self._routes):
            log.info("discovered MCP servers: %s", ", ".join(sorted(routes)) or "none")
        self._routes = MappingProxyType(routes)
        if self.on_change is not None:
            try:
                self.on_change(sorted(routable, key=lambda e: e.name))
            except OSError:
                log.exception("cannot hand the discovered servers to the workers")


def watch_for_workers(settings: Settings, path: Path) -> KubeDiscovery | None:
    """The launcher's watch (when ``discovery.kubernetes`` is set), writing each change to ``path`` for its
    workers; None without discovery. Workers started with ``DISCOVERY_FILE_ENV=path`` read it."""
    cfg = settings.discovery.kubernetes if settings.discovery is not None else None
    if cfg is None:
        return None
    d = KubeDiscovery(cfg, reserved={s.name for s in settings.servers}, on_change=lambda e: write_snapshot(path, e))
    d.start()
    return d


async def start_discovery(settings: Settings) -> KubeDiscovery | SharedDiscovery | None:
    """Start watching when ``discovery.kubernetes`` is set (or read the launcher's snapshot when it runs the watch
    for its workers); waits briefly for the first list (empty until then)."""
    import asyncio

    cfg = settings.discovery.kubernetes if settings.discovery is not None else None
    if cfg is None:
        return None
    reserved = {s.name for s in settings.servers}
    shared = os.environ.get(DISCOVERY_FILE_ENV)
    d: KubeDiscovery | SharedDiscovery = (
        SharedDiscovery(Path(shared), reserved) if shared else KubeDiscovery(cfg, reserved)
    )
    d.start()
    if not await asyncio.to_thread(d.synced.wait, cfg.request_timeout_s):
        log.warning("kubernetes discovery: no first list yet; serving gateway.yaml servers only until it arrives")
    return d
