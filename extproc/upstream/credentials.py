"""Every configured server's upstream credentials, built once at start-up; the one call the exchange makes."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import sniffio  # noqa: F401  (see pyproject.toml: httpcore looks for it on every request)

from extproc.authn.principal import Principal
from extproc.errors import ConfigError
from extproc.upstream.assertion import AssertionKey, GatewayAssertion
from extproc.upstream.base import ExchangeContext, UpstreamCredentials
from extproc.upstream.cache import RecordedCredentials
from extproc.upstream.config import JWKS_PATH, Assertion, IdJag, Static, TokenExchange
from extproc.upstream.static import StaticCredential
from extproc.upstream.token_exchange import IdJagExchanger, TokenExchanger

if TYPE_CHECKING:
    from extproc.settings import Settings


def target(server: str, backend: str | None) -> str:
    """The credentials' key: ``server``, or ``server/backend`` for a backend with an ``upstream_auth`` of its own."""
    return f"{server}/{backend}" if backend else server


class Upstream:
    """Server (or server/backend) -> its credentials; the gateway's JWKS for identity assertions."""

    def __init__(
        self, by_server: Mapping[str, UpstreamCredentials], keys: list[AssertionKey], http: Any = None
    ) -> None:
        self.by_server = dict(by_server)
        self.jwks: dict[str, Any] = {"keys": [k.jwk for k in keys]}
        self._http = http
        self.recorded = RecordedCredentials()  # recorded in full per unit; later uses in that unit only name it
        self.counters: dict[tuple[str, str, str], Any] = {}  # (server, kind, outcome) -> its metric child
        self._routes: dict[tuple[str, str | None], tuple[str, UpstreamCredentials | None]] = {}

    @classmethod
    def from_settings(cls, settings: Settings, clock: Callable[[], float] = time.time) -> Upstream | None:
        """None when no server has ``upstream_auth``. Key files are read now: a bad one fails the start."""
        configured = [(s.name, s.upstream_auth) for s in settings.servers if s.upstream_auth is not None] + [
            (target(s.name, b.name), b.upstream_auth)
            for s in settings.servers
            for b in s.backends or []
            if b.upstream_auth is not None
        ]
        if not configured:
            return None
        if settings.auth is None:
            raise ConfigError("servers[].upstream_auth: needs auth (the upstream credential is issued for the caller)")
        http = None
        keys: dict[Path, AssertionKey] = {}
        out: dict[str, UpstreamCredentials] = {}
        deadline = settings.processor.message_timeout_ms / 1000
        for name, cfg in configured:
            if isinstance(cfg, TokenExchange) and cfg.timeout_s >= deadline:
                raise ConfigError(
                    f"servers[{name}].upstream_auth.timeout_s: {cfg.timeout_s:g}s must be below "
                    f"processor.message_timeout_ms ({deadline:g}s), or Envoy gives up on the request before we answer"
                )
            try:
                if isinstance(cfg, IdJag):  # before TokenExchange: it is one, with a second step
                    http = http or httpx.AsyncClient(follow_redirects=False, headers={"user-agent": "mcp-extproc"})
                    out[name] = IdJagExchanger(name, cfg, http, clock=clock)
                elif isinstance(cfg, TokenExchange):
                    http = http or httpx.AsyncClient(follow_redirects=False, headers={"user-agent": "mcp-extproc"})
                    out[name] = TokenExchanger(name, cfg, http, clock=clock)
                elif isinstance(cfg, Static):
                    out[name] = StaticCredential(cfg, time.monotonic)
                elif isinstance(cfg, Assertion):
                    key = keys.get(cfg.key_file) or keys.setdefault(cfg.key_file, AssertionKey(cfg.key_file))
                    out[name] = GatewayAssertion(cfg, key, settings.auth.public_url, clock)
            except (OSError, ValueError) as e:
                raise ConfigError(f"servers[{name}].upstream_auth: {e}") from e
        return cls(out, list(keys.values()), http)

    def _for(self, server: str, backend: str | None) -> tuple[str, UpstreamCredentials | None]:
        """A backend's own credentials, else its server's (worked out once per server and backend)."""
        found = self._routes.get((server, backend))
        if found is None:
            key = target(server, backend)
            found = (key, self.by_server[key]) if key in self.by_server else (server, self.by_server.get(server))
            if len(self._routes) < 100_000:  # server and backend names come from the config, never from a client
                self._routes[(server, backend)] = found
        return found

    def asserts_identity(self, server: str, backend: str | None = None) -> bool:
        """Does this upstream get the gateway's signed assertion (which then replaces x-mcp-user/x-mcp-groups)?"""
        return isinstance(self._for(server, backend)[1], GatewayAssertion)

    def serves_jwks(self, path: str) -> bool:
        """Is this request for the gateway's JWKS (only when some server gets identity assertions)?"""
        return bool(self.jwks["keys"]) and path.split("?", 1)[0] == JWKS_PATH

    def warm(
        self, principal: Principal | None, server: str, ctx: ExchangeContext, backend: str | None = None
    ) -> dict[str, str] | None:
        """``headers_for``'s answer when it needs no await (no ``upstream_auth``, or a token exchange's cached
        token), else None."""
        key, creds = self._for(server, backend)
        if creds is None:
            return {}
        return creds.warm(principal, key, ctx) if isinstance(creds, TokenExchanger) else None

    async def headers_for(
        self, principal: Principal | None, server: str, ctx: ExchangeContext, backend: str | None = None
    ) -> dict[str, str]:
        """The headers the request toward ``server`` (its ``backend``) gets; none without ``upstream_auth``. A
        backend's own credentials are cached and recorded under ``server/backend``."""
        key, creds = self._for(server, backend)
        return {} if creds is None else await creds.headers_for(principal, key, ctx)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
