"""A loopback stand-in for the Kubernetes API server, for the official client (no real API server can be had here).

Responses are shaped like the API's documented objects: ServiceList / Service (core/v1) and EndpointSliceList /
EndpointSlice (discovery.k8s.io/v1, as the EndpointSlice controller writes them: the Service's labels copied,
``kubernetes.io/service-name``, endpoint ``conditions``) for list and watch (with resourceVersion, BOOKMARK events,
and a 410 Gone ERROR event when asked to resume from a compacted version),
SubjectAccessReview (authorization.k8s.io/v1) create, and Status objects for errors. Start/stop it to play an API
server that goes away and comes back on the same port.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "fake-api-token"
SarAnswer = Callable[[dict[str, Any]], dict[str, Any]]  # spec -> status (may sleep to play a slow API server)


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class _QuietServer(ThreadingHTTPServer):
    """A client hanging up on a watch is how watches end: not an error to print into other tests' output."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class FakeKubeApi:
    """Services in namespaces, an event log with resourceVersions, and a SubjectAccessReview answerer."""

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.rv = 100
        self.services: dict[tuple[str, str], dict[str, Any]] = {}
        self.slices: dict[tuple[str, str], dict[str, Any]] = {}  # (namespace, slice name)
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # the object's "kind" tells which resource
        self.compacted = 0  # events at or below this resourceVersion are gone: resuming from them is 410
        self.sar: SarAnswer = lambda spec: {"allowed": False, "reason": "no RBAC policy matched"}
        self.reviews: list[dict[str, Any]] = []
        self.requests: list[str] = []
        self.bookmark_interval = 0.3
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._closing = False
        self.connections: set[Any] = set()

    # --- lifecycle -------------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeKubeApi:
        api = self

        class Handler(_Handler):
            fake = api

        self._closing = False
        self._server = _QuietServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """The API server goes away: open watches are cut and new connections refused."""
        self._closing = True
        with self._cond:
            self._cond.notify_all()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for conn in list(self.connections):  # keep-alive connections too: a stopped API server answers nothing
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self.connections.clear()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "gateway", "user": {"token": TOKEN}}],
                    "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "gateway"}}],
                    "current-context": "fake",
                }
            )
        )
        return path

    # --- state changes (each is one event with a new resourceVersion) -----------------------------------------

    def put_service(
        self,
        namespace: str,
        name: str,
        port: int,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        cluster_ip: str = "127.0.0.1",
        ready: bool | None = True,
    ) -> None:
        """A Service; with ``ready`` (not None) also its EndpointSlice, one pod in that readiness (as the
        controller keeps it for a Service with a selector)."""
        with self._cond:
            self.rv += 1
            key = (namespace, name)
            kind = "MODIFIED" if key in self.services else "ADDED"
            svc = {
                "kind": "Service",
                "apiVersion": "v1",
                "metadata": {
                    "name": name,
                    "namespace": namespace,
                    "uid": f"uid-{namespace}-{name}",
                    "resourceVersion": str(self.rv),
                    "creationTimestamp": "2026-12-01T00:00:00Z",
                    "labels": labels or {},
                    "annotations": annotations or {},
                },
                "spec": {
                    "ports": [{"name": "mcp", "protocol": "TCP", "port": port, "targetPort": port}],
                    "selector": {"app": name},
                    "clusterIP": cluster_ip,
                    "clusterIPs": [cluster_ip],
                    "type": "ClusterIP",
                    "sessionAffinity": "None",
                    "ipFamilies": ["IPv4"],
                    "ipFamilyPolicy": "SingleStack",
                    "internalTrafficPolicy": "Cluster",
                },
                "status": {"loadBalancer": {}},
            }
            self.services[key] = svc
            self.events.append((self.rv, kind, svc))
            self._cond.notify_all()
        if ready is not None:
            self.set_endpoints(namespace, name, [("10.0.0.1", ready)])

    def set_endpoints(self, namespace: str, name: str, endpoints: list[tuple[str, bool | None]]) -> None:
        """The Service's EndpointSlice (``<name>-abcde``): these pod addresses and their ``ready`` conditions
        (None: the condition left out, which consumers read as ready); an empty list keeps the slice, no endpoints."""
        with self._cond:
            svc = self.services[(namespace, name)]
            self.rv += 1
            key = (namespace, f"{name}-abcde")
            kind = "MODIFIED" if key in self.slices else "ADDED"
            port = svc["spec"]["ports"][0]
            labels = {
                **svc["metadata"]["labels"],
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            }
            items = []
            for n, (ip, ready) in enumerate(endpoints):
                conditions: dict[str, Any] = {"serving": bool(ready), "terminating": False}
                if ready is not None:
                    conditions["ready"] = ready
                items.append({
                    "addresses": [ip], "conditions": conditions, "nodeName": "node-1",
                    "targetRef": {"kind": "Pod", "namespace": namespace, "name": f"{name}-{n}", "uid": f"pod-{n}"},
                })  # fmt: skip
            self.slices[key] = {
                "kind": "EndpointSlice",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {
                    "name": key[1], "generateName": f"{name}-", "namespace": namespace,
                    "uid": f"uid-slice-{namespace}-{name}", "resourceVersion": str(self.rv),
                    "creationTimestamp": "2026-12-01T00:00:00Z", "labels": labels,
                    "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name,
                                         "uid": svc["metadata"]["uid"], "controller": True,
                                         "blockOwnerDeletion": True}],
                },
                "addressType": "IPv4",
                "endpoints": items or None,
                "ports": [{"name": port["name"], "protocol": "TCP", "port": port["targetPort"]}],
            }  # fmt: skip
            self.events.append((self.rv, kind, self.slices[key]))
            self._cond.notify_all()

    def delete_service(self, namespace: str, name: str) -> None:
        """The Service, and its EndpointSlice (garbage-collected through its owner reference)."""
        with self._cond:
            for store, key in ((self.slices, (namespace, f"{name}-abcde")), (self.services, (namespace, name))):
                obj = store.pop(key, None)
                if obj is None:
                    continue
                self.rv += 1
                gone = {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(self.rv)}}
                self.events.append((self.rv, "DELETED", gone))
            self._cond.notify_all()

    def compact(self) -> None:
        """Forget the event history (etcd compaction): watches resuming from before now get 410 Gone."""
        with self._cond:
            self.compacted = self.rv
            self.events.clear()

    # --- what the handler serves -----------------------------------------------------------------------------

    def matching(self, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        objects = self.services if kind == "Service" else self.slices
        return [
            s
            for (ns, _), s in sorted(objects.items())
            if (namespace is None or ns == namespace) and _selects(selector, s["metadata"]["labels"])
        ]


def _selects(selector: str, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key, eq, value = term.partition("=")
        if eq and labels.get(key.rstrip("=!")) != value.lstrip("="):
            return False
        if not eq and key not in labels:
            return False
    return True


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubeApi
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.fake.connections.add(self.connection)

    def finish(self) -> None:
        self.fake.connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def _json(self, code: int, doc: dict[str, Any]) -> None:
        body = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:  # the client gave up (a timeout under test)
            self.close_connection = True

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._json(401, status(401, "Unauthorized", "Unauthorized"))
            return False
        return True

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        self.fake.requests.append(self.path)
        if not self._authorized():
            return
        parts = url.path.strip("/").split("/")
        group = {("api", "v1"): ("Service", "v1", "services"),
                 ("apis", "discovery.k8s.io"): ("EndpointSlice", "discovery.k8s.io/v1", "endpointslices")}  # fmt: skip
        prefix = parts[:3] if parts[:1] == ["apis"] else parts[:2]
        kind, api_version, plural = group.get((parts[0], parts[1]) if len(parts) > 1 else ("", ""), ("", "", ""))
        rest = parts[len(prefix) :]
        if kind and prefix[-1] == "v1" and rest == [plural]:
            namespace = None
        elif kind and prefix[-1] == "v1" and len(rest) == 3 and rest[0] == "namespaces" and rest[2] == plural:
            namespace = rest[1]
        else:
            self._json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        selector = q.get("labelSelector", "")
        if q.get("watch", "").lower() in ("true", "1"):
            self._watch(kind, namespace, selector, int(q.get("resourceVersion") or 0), q)
            return
        with self.fake._cond:
            items = [
                {k: v for k, v in s.items() if k not in ("kind", "apiVersion")}
                for s in self.fake.matching(kind, namespace, selector)
            ]
            doc = {
                "kind": f"{kind}List",
                "apiVersion": api_version,
                "metadata": {"resourceVersion": str(self.fake.rv)},
                "items": items,
            }
        self._json(200, doc)

    def _watch(self, kind: str, namespace: str | None, selector: str, since: int, q: dict[str, str]) -> None:
        fake = self.fake
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

        def send(event: dict[str, Any]) -> None:
            line = json.dumps(event).encode() + b"\n"
            self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
            self.wfile.flush()

        deadline = time.monotonic() + float(q.get("timeoutSeconds", "300"))
        bookmarks = q.get("allowWatchBookmarks", "").lower() == "true"
        try:
            with fake._cond:
                if since < fake.compacted:
                    gone = status(410, "Expired", f"too old resource version: {since} ({fake.compacted})")
                    send({"type": "ERROR", "object": gone})
                    return
            sent, last_bookmark = since, time.monotonic()
            while not fake._closing and time.monotonic() < deadline:
                with fake._cond:
                    fresh = [(rv, k, o) for rv, k, o in fake.events if rv > sent]
                    current = fake.rv  # examined up to here, atomically with ``fresh``
                    if not fresh:
                        fake._cond.wait(0.1)
                for rv, change, obj in fresh:
                    sent = rv
                    ns = obj["metadata"]["namespace"]
                    if obj["kind"] != kind:
                        continue
                    if (namespace is None or ns == namespace) and _selects(selector, obj["metadata"]["labels"]):
                        send({"type": change, "object": obj})
                if not fresh and bookmarks and time.monotonic() - last_bookmark > fake.bookmark_interval:
                    sent = max(sent, current)
                    version = "v1" if kind == "Service" else "discovery.k8s.io/v1"
                    mark = {"kind": kind, "apiVersion": version, "metadata": {"resourceVersion": str(sent)}}
                    send({"type": "BOOKMARK", "object": mark})
                    last_bookmark = time.monotonic()
            if fake._closing:
                self.close_connection = True
            else:
                self.wfile.write(b"0\r\n\r\n")  # a watch that timed out ends cleanly; the connection stays
        except OSError:
            self.close_connection = True

    def do_POST(self) -> None:
        self.fake.requests.append(self.path)
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if urlsplit(self.path).path != "/apis/authorization.k8s.io/v1/subjectaccessreviews":
            self._json(404, status(404, "NotFound", "the server could not find the requested resource"))
            return
        if body.get("kind") != "SubjectAccessReview" or "spec" not in body:
            self._json(400, status(400, "BadRequest", "expected a SubjectAccessReview"))
            return
        self.fake.reviews.append(body["spec"])
        answer = self.fake.sar(body["spec"])
        self._json(
            201,
            {
                "kind": "SubjectAccessReview",
                "apiVersion": "authorization.k8s.io/v1",
                "metadata": {"creationTimestamp": None},
                "spec": body["spec"],
                "status": answer,
            },
        )
