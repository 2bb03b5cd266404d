"""What the MCP server gets instead of the caller's token (extproc/upstream/ does the issuing).

The caller's token never goes upstream (no token passthrough, per the MCP spec): the request carries the server's
own credential for this caller (``upstream_auth``), the server's own session id, and identity headers only when
the gateway sets them itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from extproc.admission import SESSION_HEADER
from extproc.authn.principal import Principal
from extproc.authn.verify import identity_headers
from extproc.envoy.fields import UPSTREAM_HEADER
from extproc.gateway import Gateway
from extproc.recording.exchange_log import ExchangeLog
from extproc.upstream.base import ExchangeContext, UpstreamCredential

# Never forwarded as the client sent them: the token stays at the gateway (no token passthrough, per the MCP
# spec) and identity headers are only ever set by the gateway itself, in neither spelling (a WSGI server reads
# x_mcp_user as x-mcp-user; Envoy also rejects underscore names).
UPSTREAM_REMOVE = ("authorization", "x-mcp-user", "x-mcp-groups", "x_mcp_user", "x_mcp_groups")


def caller_token(headers: Mapping[str, str]) -> str:
    """The caller's bearer token, as sent (already verified at admission)."""
    return headers.get("authorization", "").strip().partition(" ")[2].strip()


def credential_recorder(gw: Gateway, log: ExchangeLog) -> Callable[[UpstreamCredential], None]:
    """Where a credential's use (issued, cached, refused) goes: the metrics and the exchange's record."""

    def record(ev: UpstreamCredential) -> None:
        outcome = "refused" if ev.refused else "cached" if ev.cached else "issued"
        gw.metrics.upstream_credentials.labels(ev.server, ev.kind, outcome).inc()
        log.emit(ev)

    return record


async def credentials(
    gw: Gateway, who: Principal | None, server: str, ctx: ExchangeContext, backend: str | None = None
) -> dict[str, str]:
    """What the server's (or its backend's) ``upstream_auth`` sets on the request; the caller's token is only ever
    the subject of a token exchange at its own issuer. Raises the GatewayError that refuses the request when none
    can be had."""
    if gw.upstream is None:
        return {}
    return await gw.upstream.headers_for(who, server, ctx, backend)


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
