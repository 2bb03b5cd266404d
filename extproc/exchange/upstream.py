"""What the MCP server gets instead of the caller's token (extproc/upstream/ does the issuing).

The caller's token never goes upstream (no token passthrough, per the MCP spec): the request carries the server's
own credential for this caller (``upstream_auth``), the server's own session id, and identity headers only when
the gateway sets them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from extproc.admission import SESSION_HEADER
from extproc.authn.principal import Principal
from extproc.authn.verify import identity_headers
from extproc.envoy.fields import UPSTREAM_HEADER
from extproc.gateway import Gateway
from extproc.recording.events import ExchangeEnd
from extproc.recording.exchange_log import ExchangeLog
from extproc.upstream.base import CredentialLog, ExchangeContext, ExchangeEndNaming, UpstreamCredential

# Never forwarded as the client sent them: the token stays at the gateway (no token passthrough, per the MCP
# spec) and identity headers are only ever set by the gateway itself, in neither spelling (a WSGI server reads
# x_mcp_user as x-mcp-user; Envoy also rejects underscore names).
UPSTREAM_REMOVE = ("authorization", "x-mcp-user", "x-mcp-groups", "x_mcp_user", "x_mcp_groups")


def caller_token(headers: Mapping[str, str]) -> str:
    """The caller's bearer token, as sent (already verified at admission)."""
    return headers.get("authorization", "").strip().partition(" ")[2].strip()


class CredentialRecorder(CredentialLog):
    """Where an exchange's credential use (issued, cached, refused) goes: the metrics, and the exchange's record.

    A credential is recorded in full (``upstream.credential``: kind, SHA-256, expiry, audience, scopes, who acted
    for whom) the first time this process uses it in a recording unit; later exchanges of that unit name it in
    their ``exchange.end`` (server, kind, SHA-256, expiry) and readers join the two (recording/report.py). A refusal
    is always recorded in full, and so is a use whose unit is not known yet (it has no unit to be found in)."""

    __slots__ = ("_gw", "_held", "_log", "named")

    def __init__(self, gw: Gateway, log: ExchangeLog) -> None:
        self._gw = gw
        self._log = log
        self.named: dict[str, Any] | None = None  # what exchange.end names instead of a second full record
        self._held: tuple[str, str, str] | None = None  # recorded in full before the unit was known (initialize)

    def _count(self, server: str, kind: str, outcome: str) -> None:
        upstream = self._gw.upstream
        counter = upstream.counters.get((server, kind, outcome)) if upstream is not None else None
        if counter is None:  # the labelled child looked up once per (server, kind, outcome), not per exchange
            counter = self._gw.metrics.upstream_credentials.labels(server, kind, outcome)
            if upstream is not None:
                upstream.counters[(server, kind, outcome)] = counter
        counter.inc()

    def name(self, server: str, kind: str, sha256: str, expires_at: float | None, cached: bool) -> bool:
        """The warm path: a credential this writer recorded in full in the unit is only named by exchange.end (no
        event is built for it)."""
        upstream, unit = self._gw.upstream, self._log.unit
        if upstream is None or unit is None or not sha256 or not upstream.recorded.seen((unit, server, kind, sha256)):
            return False
        self._count(server, kind, "cached" if cached else "issued")
        self.named = {"server": server, "kind": kind, "sha256": sha256, "expires_at": expires_at}
        return True

    def __call__(self, ev: UpstreamCredential) -> None:
        self._count(ev.server, ev.kind, "refused" if ev.refused else "cached" if ev.cached else "issued")
        upstream, unit = self._gw.upstream, self._log.unit
        if upstream is None or unit is None or ev.refused is not None or not ev.sha256:
            self._log.emit(ev)
            if upstream is not None and unit is None and ev.refused is None and ev.sha256:
                self._held = (ev.server, ev.kind, ev.sha256)  # goes out under the unit once it is known
            return
        key = (unit, ev.server, ev.kind, ev.sha256)
        if upstream.recorded.seen(key):
            self.named = {"server": ev.server, "kind": ev.kind, "sha256": ev.sha256, "expires_at": ev.expires_at}
            return
        self._log.emit(ev)
        upstream.recorded.add(key)

    def ended(self) -> None:
        """The exchange ends: a credential recorded before its unit was known now counts as recorded in it."""
        upstream, unit = self._gw.upstream, self._log.unit
        if self._held is not None and upstream is not None and unit is not None:
            upstream.recorded.add((unit, *self._held))


def credential_recorder(gw: Gateway, log: ExchangeLog) -> CredentialRecorder:
    """The exchange's ``ExchangeContext.record``."""
    return CredentialRecorder(gw, log)


def end_type(credentials: CredentialRecorder | None) -> type[ExchangeEnd]:
    """The class of the exchange's ``exchange.end``: built as the one that names its credential when it will (one
    event built, not a second copy of it)."""
    return ExchangeEndNaming if credentials is not None and credentials.named is not None else ExchangeEnd


def ending(end: ExchangeEnd, credentials: CredentialRecorder | None) -> ExchangeEnd:
    """``end``, naming the credential the exchange used when it was recorded in full earlier in the unit."""
    if credentials is None:
        return end
    credentials.ended()
    if isinstance(end, ExchangeEndNaming) and credentials.named is not None:  # built so by end_type: filled in place
        end.credential = credentials.named
    return end


async def credentials(
    gw: Gateway, who: Principal | None, server: str, ctx: ExchangeContext, backend: str | None = None
) -> dict[str, str]:
    """What the server's (or its backend's) ``upstream_auth`` sets on the request; the caller's token is only ever
    the subject of a token exchange at its own issuer. Raises the GatewayError that refuses the request when none
    can be had."""
    if gw.upstream is None:
        return {}
    warm = gw.upstream.warm(who, server, ctx, backend)  # a cached token: no coroutine below this one
    return warm if warm is not None else await gw.upstream.headers_for(who, server, ctx, backend)


def gateway_headers(
    gw: Gateway, who: Principal | None, server: str, server_session: str | None, backend: str | None = None
) -> dict[str, str]:
    """What the MCP server gets instead of the caller's token: the server's own session id, maybe who."""
    out = {}
    if who is not None and server_session is not None:
        out[SESSION_HEADER] = server_session  # the server's own id, never the unit it is recorded under
    signed = gw.upstream is not None and gw.upstream.asserts_identity(server, backend)
    if who is not None and gw.options.forward_identity and not signed:
        out.update(identity_headers(who))  # trust-me headers; a signed assertion replaces them
    return out


def request_headers(set_headers: dict[str, str], route: Mapping[str, str]) -> tuple[dict[str, str], tuple[str, ...]]:
    """The request's header mutation: what is set, and what the client sent that is removed. Never removes what the
    gateway itself sets (its own Authorization), whatever order Envoy applies them in."""
    out = {**set_headers, **route}
    remove = tuple(h for h in (*UPSTREAM_REMOVE, *(() if route else (UPSTREAM_HEADER,))) if h not in out)
    return out, remove
