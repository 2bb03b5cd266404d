"""Admission of one request, in the security order: load -> route -> origin -> token -> recorder -> backend -> session
owner.

Two kinds of refusal, on purpose: before an identity is verified (unknown path, bad origin, missing or bad token,
recorder down) nothing is recorded, so anonymous floods cannot fill the store; from a verified identity on, a
refusal (no backend for the caller, someone else's session id, an HTTP method MCP does not use) is recorded under
that identity.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from extproc.authn.challenge import www_authenticate
from extproc.authn.errors import AuthError
from extproc.authn.principal import Principal
from extproc.authn.session_binding import unbind
from extproc.envoy.config import Server
from extproc.errors import GatewayError, MethodNotAllowed, NotFound, Overloaded, RecordingUnavailable
from extproc.gateway import Gateway
from extproc.mcp.jsonrpc import TRANSPORT_METHODS
from extproc.recording.events import synthetic_session_id
from extproc.routing import Backend

SESSION_HEADER = "mcp-session-id"


@dataclass(frozen=True, slots=True)
class Unrecorded:
    """Answered before any identity was verified: logged and counted, not recorded."""

    error: GatewayError
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Admitted:
    """A routed request of a verified caller (or of anyone, in anonymous mode). It is recorded from here on; a
    non-None ``refusal`` is answered after its start is recorded."""

    server: Server
    principal: Principal | None
    backend: Backend | None
    route_headers: Mapping[str, str]  # what sends the request to the caller's backend (none for a static route)
    session: str | None  # the server's own session id (unbound), or None until the server names one
    refusal: GatewayError | None = None
    refusal_headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def scope(self) -> str:
        """What the caller's session id and request state are bound to: server and backend."""
        return self.backend.scope(self.server.name) if self.backend is not None else ""


async def admit(gw: Gateway, headers: Mapping[str, str], exchange_id: str) -> Admitted | Unrecorded:
    """Decide whether this request may become an exchange, and under which identity, backend and session."""
    path = headers.get(":path", "")
    gw.overload.busy()
    try:
        if gw.overload.overloaded:  # shed before any work: exchanges already admitted get the loop back
            gw.overload.shed += 1
            raise Overloaded(f"event loop {gw.overload.lag * 1000:.0f} ms behind")
        server = gw.router.match(path)
        if server is None:
            raise NotFound(f"no server for path {path.split('?', 1)[0][:200]!r}")
        gw.router.check_origin(headers.get("origin"))  # in every mode: the server sees its own host name
        principal = await gw.auth.authenticate(headers.get("authorization")) if gw.auth is not None else None
        if gw.options.required and not gw.sink.accepting:
            raise RecordingUnavailable("recorder not accepting events")
    except AuthError as e:
        challenge = {"www-authenticate": www_authenticate(e, gw.options.metadata_url)} if e.status == 401 else {}
        return Unrecorded(e, challenge)
    except Overloaded as e:
        return Unrecorded(e, {"retry-after": "1"})
    except GatewayError as e:
        return Unrecorded(e)

    session = headers.get(SESSION_HEADER) or None
    backend = None
    try:
        backend = gw.router.backend(server, principal)
        route = await gw.router.upstream_headers(server, backend, path)
        admitted = Admitted(server, principal, backend, route, session)
        if session is not None and principal is not None:
            session = unbind(session, principal, gw.options.session_key, admitted.scope)
        method = headers.get(":method", "")
        if method not in TRANSPORT_METHODS:
            return _refused(admitted, session, MethodNotAllowed(method), {"allow": ", ".join(TRANSPORT_METHODS)})
        return Admitted(server, principal, backend, route, session)
    except GatewayError as e:  # no backend for this caller, or someone else's session
        # A refused exchange presenting a session id is a unit of its own: it never joins the session it named.
        return Admitted(
            server, principal, backend, {}, synthetic_session_id(exchange_id) if session else None, refusal=e
        )


def _refused(admitted: Admitted, session: str | None, err: GatewayError, headers: Mapping[str, str]) -> Admitted:
    return Admitted(
        admitted.server, admitted.principal, admitted.backend, {}, session, refusal=err, refusal_headers=headers
    )
