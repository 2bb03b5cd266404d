"""Which configured MCP server a request is for, and from which browser origins. Envoy routes on the same exact
paths, rendered from the same config."""

from __future__ import annotations

import ipaddress

from extproc.authn.config import origin_of
from extproc.errors import OriginNotAllowed
from extproc.settings import Server, Settings


class Router:
    """Maps exactly ``/<name>/mcp`` (a query string allowed) to the server called ``name``; anything else is none."""

    def __init__(self, settings: Settings) -> None:
        self._by_path = {s.prefix: s for s in settings.servers}
        self._origins = allowed_origins(settings)

    def match(self, path: str) -> Server | None:
        """The server for this request path, or None. ``/demo/mcp/`` and ``/demo/mcp/x`` are not MCP endpoints."""
        return self._by_path.get(path.split("?", 1)[0])

    def check_origin(self, origin: str | None) -> None:
        """Refuse browser requests from other sites (DNS rebinding), in every mode. ``None``: no Origin header.

        The server gets its own host name from Envoy, so its own DNS-rebinding check can no longer see the
        client's: the gateway checks the Origin for it.
        """
        if origin is not None and origin.lower().rstrip("/") not in self._origins:
            raise OriginNotAllowed(origin)


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
