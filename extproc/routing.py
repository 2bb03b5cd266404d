"""Which MCP server a request is for, which backend of it serves this caller, and from which browser origins.

Envoy routes single-upstream servers on the same exact paths, rendered from the same config. Servers with
identity-scoped backends, and servers discovered at run time (``extproc.kube``), are reached through one
per-request cluster: the processor names the destination address in ``UPSTREAM_HEADER`` (Envoy removes any
client copy before the processor runs, and the processor overwrites it) and rewrites ``:path``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from extproc.authn.config import origin_of
from extproc.authn.principal import ANONYMOUS, Principal
from extproc.envoy.config import Server
from extproc.envoy.fields import UPSTREAM_HEADER
from extproc.errors import Forbidden, GatewayError, OriginNotAllowed
from extproc.policy.compiled import CompiledSubjects
from extproc.policy.compiler import compile_subjects
from extproc.policy.engine import subjects_miss
from extproc.sections import split_hostport
from extproc.settings import Settings

RESOLVE_TTL_S = 10.0


@dataclass(frozen=True, slots=True)
class Backend:
    """One upstream of a server. ``subjects`` None: any caller. ``dynamic``: reached via the per-request cluster."""

    name: str
    upstream: str  # host:port
    path: str
    subjects: CompiledSubjects | None = None
    dynamic: bool = True

    def scope(self, server: str) -> str:
        """What a session opened here is bound to: the server and this backend."""
        return f"{server}/{self.name}"


@dataclass(frozen=True, slots=True)
class Route:
    """A server and its backends in order (first match wins)."""

    server: Server
    backends: tuple[Backend, ...]


class ServerSource(Protocol):
    """Servers found at run time (Kubernetes discovery): a snapshot swapped whole on each change."""

    @property
    def routes(self) -> Mapping[str, Route]: ...


class NoBackend(Forbidden):
    """The server exists but none of its backends is for this caller."""

    def __init__(self, server: str) -> None:
        super().__init__(f"no backend of server {server!r} serves this caller")


class UpstreamUnresolved(GatewayError):
    """A backend's host name does not resolve."""

    status = 503
    jsonrpc_code = -32603
    client_message = "MCP server unavailable"


def static_routes(settings: Settings) -> dict[str, Route]:
    """gateway.yaml servers compiled once: one static backend, or backends with compiled subjects."""
    out = {}
    for s in settings.servers:
        if s.backends is None:
            assert s.upstream is not None  # validated: exactly one of upstream/backends
            backends: tuple[Backend, ...] = (Backend("", s.upstream, s.path, None, dynamic=False),)
        else:
            backends = tuple(
                Backend(b.name, b.upstream, b.path or s.path, compile_subjects(b.subjects)) for b in s.backends
            )
        out[s.name] = Route(s, backends)
    return out


class Router:
    """Maps exactly ``/<name>/mcp`` (a query string allowed) to a server (gateway.yaml first, then discovered), and a
    caller to a backend."""

    def __init__(self, settings: Settings, discovered: ServerSource | None = None) -> None:
        self._static = static_routes(settings)
        self.discovered = discovered
        self._resolved: dict[str, tuple[float, str]] = {}
        self._origins = allowed_origins(settings)
        self._literal: dict[str, str] = {}  # upstream "ip:port" as written -> the header value

    def _route(self, name: str) -> Route | None:
        route = self._static.get(name)
        if route is None and self.discovered is not None:
            route = self.discovered.routes.get(name)
        return route

    def match(self, path: str) -> Server | None:
        """The server for this request path, or None. ``/demo/mcp/`` and ``/demo/mcp/x`` are not MCP endpoints."""
        path = path.split("?", 1)[0]
        if not path.startswith("/") or not path.endswith("/mcp"):
            return None
        route = self._route(path[1:-4])
        return route.server if route is not None and route.server.prefix == path else None

    def check_origin(self, origin: str | None) -> None:
        """Refuse browser requests from other sites (DNS rebinding), in every mode. ``None``: no Origin header.

        The server gets its own host name from Envoy, so its own DNS-rebinding check can no longer see the
        client's: the gateway checks the Origin for it.
        """
        if origin is not None and origin.lower().rstrip("/") not in self._origins:
            raise OriginNotAllowed(origin)

    def backend(self, server: Server, who: Principal | None) -> Backend:
        """The first backend of ``server`` whose subjects match ``who``; ``NoBackend`` when none does."""
        route = self._route(server.name)
        who = who or ANONYMOUS
        for b in route.backends if route is not None else ():
            if b.subjects is None or subjects_miss(b.subjects, who) is None:
                return b
        raise NoBackend(server.name)

    async def upstream_headers(self, server: Server, backend: Backend, path: str) -> dict[str, str]:
        """Headers that send this request to ``backend``: none for a static route, else address and path."""
        if not backend.dynamic:
            return {}
        target = self._literal.get(backend.upstream)
        if target is None:
            host, port = split_hostport(backend.upstream)
            address = await self._resolve(host)
            target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
            if address == host and len(self._literal) < 100_000:  # an IP literal: the same answer forever
                self._literal[backend.upstream] = target
        rest = path[len(server.prefix) :]  # "", "/...", "?..." (match() checked the prefix)
        upstream_path = backend.path + rest if not rest or rest[0] == "?" else backend.path.rstrip("/") + rest
        return {UPSTREAM_HEADER: target, ":path": upstream_path}

    async def _resolve(self, host: str) -> str:
        """An IP for ``host``: the per-request cluster connects to addresses, not names (cached briefly)."""
        try:
            return str(ipaddress.ip_address(host))
        except ValueError:
            pass
        now = time.monotonic()
        hit = self._resolved.get(host)
        if hit is not None and hit[0] > now:
            return hit[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError as e:
            raise UpstreamUnresolved(f"cannot resolve backend host {host!r}: {e}") from e
        address = str(infos[0][4][0])
        self._resolved[host] = (now + RESOLVE_TTL_S, address)
        return address


def allowed_origins(settings: Settings) -> frozenset[str]:
    """The gateway's own origin (auth.public_url's, or the listen address's without auth) plus configured ones."""
    origins = set(settings.listen.allowed_origins)
    if settings.auth is not None:
        origins.add(origin_of(settings.auth.public_url))
        origins.update(settings.auth.allowed_origins)
        return frozenset(origins)
    host, port = settings.listen.address, settings.listen.port
    hosts = {host}
    try:
        if ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified:
            hosts |= {"localhost", "127.0.0.1"}
    except ValueError:
        pass
    for h in hosts:
        name = f"[{h}]" if ":" in h else h
        origins.add(f"http://{name}:{port}")
    return frozenset(origins)
