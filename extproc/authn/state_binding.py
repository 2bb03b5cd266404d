"""Binding of multi-round-trip ``requestState`` (MCP 2026-07-28) to the identity and server it was issued to.

A server that needs input answers a call with an ``input_required`` result carrying an opaque ``requestState``;
the client retries the call with it. The gateway seals each state on its way to the client,
``mxs1.<b64url(mac)>.<state>`` with mac = HMAC-SHA256(key, server, issuer, subject, state), and opens it on the
way back: a retry presenting a state issued to another identity (or for another server, or forged) is refused
before the server sees it, exactly as a foreign ``Mcp-Session-Id`` is. Stateless: any worker with the same key
checks it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from extproc.authn.principal import Principal
from extproc.errors import Forbidden

PREFIX = "mxs1."
_DOMAIN = b"mcp-extproc request state v1"
MAX_STATE = 64 << 10


class RequestStateNotYours(Forbidden):
    """A retry carries request state that was not issued to this identity on this server."""

    def __init__(self) -> None:
        super().__init__("request state belongs to another identity or server")


def _mac(state: str, who: Principal, server: str, key: bytes) -> str:
    msg = _DOMAIN
    for part in (server.encode(), who.issuer.encode(), who.subject.encode(), state.encode()):
        msg += len(part).to_bytes(4, "big") + part  # length-prefixed: no two field splits collide
    return base64.urlsafe_b64encode(hmac.new(key, msg, hashlib.sha256).digest()).rstrip(b"=").decode()


def seal(state: str, who: Principal, server: str, key: bytes) -> str:
    """The value the client receives in place of the server's ``state``."""
    return f"{PREFIX}{_mac(state, who, server, key)}.{state}"


def open_sealed(value: str, who: Principal, server: str, key: bytes) -> str:
    """The server's state, if ``value`` was sealed for ``who`` on ``server``; else ``RequestStateNotYours``."""
    if len(value) > MAX_STATE or not value.startswith(PREFIX):
        raise RequestStateNotYours()
    mac, sep, state = value[len(PREFIX) :].partition(".")
    if not sep or not hmac.compare_digest(mac.encode(), _mac(state, who, server, key).encode()):
        raise RequestStateNotYours()
    return state


def unsealed_view(value: str) -> str:
    """The state inside a sealed value WITHOUT checking it: for linking recorded rounds, never for access."""
    if value.startswith(PREFIX):
        _, sep, state = value[len(PREFIX) :].partition(".")
        return state if sep else value
    return value
