"""Stateless binding of MCP session ids to the identity that opened them.

The client never sees the upstream server's session id alone: it gets ``<b64url(server id)>.<b64url(mac)>``
where mac = HMAC-SHA256(key, server id, issuer, subject, scope). A request presenting a session id must come from
the same issuer+subject, so a leaked or guessed session id is useless to anyone else. The scope names the
gateway server and the backend the session was opened on (``<server>/<backend>``), so an id opened on one
backend is refused on another, even for the same caller. No state is kept, so any worker holding the same key
can check it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
from pathlib import Path

from extproc.authn.principal import Principal
from extproc.errors import ConfigError, SessionNotYours

log = logging.getLogger(__name__)

MIN_KEY_BYTES = 32
MAX_CLIENT_VALUE = 2048
_DOMAIN = b"mcp-extproc session binding v2"
_SHAPE = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]{43})")  # 43 chars = 32-byte MAC, unpadded


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(server_id: bytes, who: Principal, key: bytes, scope: str) -> bytes:
    # Length-prefixed fields: ("ab", "c") and ("a", "bc") must not collide.
    msg = _DOMAIN
    for part in (server_id, who.issuer.encode(), who.subject.encode(), scope.encode()):
        msg += len(part).to_bytes(4, "big") + part
    return hmac.new(key, msg, hashlib.sha256).digest()


# The MACs of the sessions in use: every exchange of a session checks its id (admission) and binds the server's id
# again (the response), two HMACs per exchange for the same inputs. A memo of the pure function, keyed by every
# input; bounded (client-chosen ids fill it): emptied when full.
_MEMO_SIZE = 4096
_memo: dict[tuple[bytes, bytes, str, str, str], str] = {}


def _mac_text(server_id: bytes, who: Principal, key: bytes, scope: str) -> str:
    memo_key = (key, server_id, who.issuer, who.subject, scope)
    text = _memo.get(memo_key)
    if text is None:
        if len(_memo) >= _MEMO_SIZE:
            _memo.clear()
        text = _memo[memo_key] = _b64(_mac(server_id, who, key, scope))
    return text


def bind(server_session_id: str, who: Principal, key: bytes, scope: str = "") -> str:
    """The session id handed to the client for the server's ``server_session_id`` (URL- and header-safe)."""
    if not server_session_id:
        raise ValueError("empty server session id")
    sid = server_session_id.encode()
    return f"{_b64(sid)}.{_mac_text(sid, who, key, scope)}"


def unbind(client_value: str, who: Principal, key: bytes, scope: str = "") -> str:
    """The server's session id, if ``who`` opened the session on ``scope``; else ``SessionNotYours``."""
    m = _SHAPE.fullmatch(client_value) if len(client_value) <= MAX_CLIENT_VALUE else None
    if m is None:
        raise SessionNotYours()
    try:
        sid = _unb64(m[1])
        server_id = sid.decode()
    except (binascii.Error, ValueError):
        raise SessionNotYours() from None
    # Compare the canonical encodings, so no second spelling of the same MAC is accepted.
    if not hmac.compare_digest(m[2].encode(), _mac_text(sid, who, key, scope).encode()):
        raise SessionNotYours()
    return server_id


def server_id_of(client_value: str) -> str | None:
    """The server's id carried in a bound value, WITHOUT checking the MAC: for finding recordings, never for access."""
    m = _SHAPE.fullmatch(client_value) if len(client_value) <= MAX_CLIENT_VALUE else None
    if m is None:
        return None
    try:
        return _unb64(m[1]).decode()
    except (binascii.Error, ValueError):
        return None


def load_key(path: str | None) -> bytes:
    """The binding key from ``auth.session_secret_file``, or a random one (valid for this process only)."""
    if path is None:
        log.warning(
            "auth.session_secret_file is not set: using a random session-binding key. MCP sessions will not "
            "survive a restart, and several workers or replicas need one shared file (e.g. `openssl rand -hex 32`)."
        )
        return secrets.token_bytes(MIN_KEY_BYTES)
    try:
        key = Path(path).read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"auth.session_secret_file: cannot read {path}: {e.strerror}") from e
    if len(key) < MIN_KEY_BYTES:
        raise ConfigError(f"auth.session_secret_file: {path} must hold at least {MIN_KEY_BYTES} bytes")
    return key
