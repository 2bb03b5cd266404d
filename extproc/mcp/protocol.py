"""Which MCP revision a request speaks, whether its HTTP headers agree with its body, and its recording unit.

Both generations pass one gateway, decided per request:
- 2025 revisions: the initialize handshake; the server's ``Mcp-Session-Id`` names the session (the recording unit).
- 2026-07-28 (stateless): every request carries ``params._meta`` (protocol version, client capabilities, client
  info) and mirrors its method and target in ``Mcp-Method`` / ``Mcp-Name`` / ``Mcp-Param-*`` headers. The gateway
  runs the specification's validation ladder (the official SDK's own classifier) before anything is forwarded, so
  Envoy, the policy and the server can never see different requests. The recording unit is a *run*: see
  ``RunTracker``.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from mcp.shared.inbound import InboundLadderRejection, classify_inbound_request, decode_header_value
from mcp_types.jsonrpc import HEADER_MISMATCH

from extproc.errors import HeaderMismatch, InvalidEnvelope, RemovedMethod
from extproc.mcp.jsonrpc import Message
from extproc.mcp.methods import NAME_BEARING, is_stateless, removed_in
from extproc.mcp.param_headers import ToolHeaders

# The x-mcp-header map of a tool (by name) at the request's server, when the gateway has seen it listed.
Declared = Callable[[str], ToolHeaders | None]

VERSION_HEADER = "mcp-protocol-version"
METHOD_HEADER = "mcp-method"
NAME_HEADER = "mcp-name"
PARAM_PREFIX = "mcp-param-"
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
# Headers that carry a claim about the body: at most one copy each, and only on requests entitled to them.
_ROUTING = (VERSION_HEADER, METHOD_HEADER, NAME_HEADER)


@dataclass(frozen=True, slots=True)
class RequestRevision:
    """What one POST body speaks. ``stateless`` requests are 2026-07-28 (or later) single requests."""

    revision: str | None
    stateless: bool
    client_info: Mapping[str, Any] | None = None


def _meta(m: Message) -> Mapping[str, Any] | None:
    params = m.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta if isinstance(meta, dict) else None


def classify(headers: Mapping[str, str], messages: Sequence[Message]) -> RequestRevision:
    """The revision a request body claims: the ``MCP-Protocol-Version`` header, else the body's ``_meta``."""
    meta = _meta(messages[0]) if len(messages) == 1 else None
    declared = headers.get(VERSION_HEADER) or (meta or {}).get(META_VERSION)
    revision = declared if isinstance(declared, str) else None
    info = (meta or {}).get(META_CLIENT_INFO)
    return RequestRevision(revision, is_stateless(revision), info if isinstance(info, dict) else None)


def check_headers(
    names: Iterable[str],
    headers: Mapping[str, str],
    messages: Sequence[Message],
    batch: bool,
    declared: Declared | None = None,
) -> RequestRevision:
    """Refuse a request whose headers could make Envoy or the server see something other than the decided body.

    ``names`` are the header names as sent (repeats kept); ``headers`` the folded, lower-case map. Raises
    ``HeaderMismatch`` (the spec's HEADER_MISMATCH) or ``InvalidEnvelope``; returns the revision otherwise.
    """
    _refuse_duplicates(names)
    rev = classify(headers, messages)
    claimed = [(_meta(m) or {}).get(META_VERSION) for m in messages]
    if VERSION_HEADER in headers and any(v is not None and v != headers[VERSION_HEADER] for v in claimed):
        # One side reading the header and the other the body would speak two different protocols.
        raise HeaderMismatch(f"{VERSION_HEADER} header does not match the request envelope's protocol version")
    claims = [h for h in headers if h in (METHOD_HEADER, NAME_HEADER) or h.startswith(PARAM_PREFIX)]
    if not rev.stateless:
        # 2025 revisions define no routing headers, but clients that speak both generations send them anyway; a
        # server speaking both may act on them, so whatever they claim must be what the body says.
        if claims:
            if batch or len(messages) != 1:
                raise HeaderMismatch(f"{claims[0]} header on a batch, which it cannot describe")
            _check_claims(headers, messages[0], declared, stateless=False)
        return rev
    if batch or len(messages) != 1:
        raise InvalidEnvelope(f"{rev.revision} requests are single JSON-RPC messages, not batches")
    message = messages[0]
    method = message.get("method")
    if not isinstance(method, str):
        raise InvalidEnvelope(f"{rev.revision} requests carry a method")
    if "id" not in message:  # a notification: no envelope is required, but a header must still tell the truth
        if METHOD_HEADER in headers and headers[METHOD_HEADER] != method:
            raise HeaderMismatch(f"{METHOD_HEADER} header does not match the request body's method")
        return rev
    if rev.revision is not None and method in removed_in(rev.revision):
        raise RemovedMethod(method, rev.revision)  # answered as the server must; nothing to authorize or forward
    # The official ladder: _meta envelope present, version / method / name headers equal to the body. The version
    # list is the claimed one: whether the server speaks it is the server's answer, not the gateway's.
    verdict = classify_inbound_request(
        message, headers=headers, supported_modern_versions=[rev.revision] if rev.revision else []
    )
    if isinstance(verdict, InboundLadderRejection):
        raise (HeaderMismatch if verdict.code == HEADER_MISMATCH else InvalidEnvelope)(verdict.message)
    _check_claims(headers, message, declared, stateless=True)
    return rev


def _check_claims(headers: Mapping[str, str], message: Message, declared: Declared | None, stateless: bool) -> None:
    """``Mcp-Method``, ``Mcp-Name`` and ``Mcp-Param-*`` equal to what the body says, and only where they apply."""
    method = message.get("method")
    if METHOD_HEADER in headers and headers[METHOD_HEADER] != method:
        raise HeaderMismatch(f"{METHOD_HEADER} header does not match the request body's method")
    if NAME_HEADER in headers:
        key = NAME_BEARING.get(method) if isinstance(method, str) else None
        if key is None:
            raise HeaderMismatch(f"{NAME_HEADER} header on {str(method)[:80]!r}, which names no target")
        params = message.get("params")
        target = params.get(key) if isinstance(params, dict) else None
        if decode_header_value(headers[NAME_HEADER]) != target:
            raise HeaderMismatch(f"{NAME_HEADER} header does not match the request body's {key!r} parameter")
    _check_param_headers(headers, message, declared, stateless)


def _refuse_duplicates(names: Iterable[str]) -> None:
    """First-copy and last-copy readers would disagree: a routing header may appear once."""
    seen: set[str] = set()
    for name in names:
        key = name.lower()
        if key in _ROUTING or key.startswith(PARAM_PREFIX):
            if key in seen:
                raise HeaderMismatch(f"{key} header appears more than once")
            seen.add(key)


def _scalars(value: Any, out: set[str]) -> set[str]:
    """Every scalar in an argument tree, rendered as a client mirrors it into a header."""
    if isinstance(value, bool):
        out.add("true" if value else "false")
    elif isinstance(value, str | int | float):
        out.add(str(value))
    elif isinstance(value, dict):
        for v in value.values():
            _scalars(v, out)
    return out


def _check_param_headers(
    headers: Mapping[str, str], message: Message, declared: Declared | None, stateless: bool
) -> None:
    """``Mcp-Param-*`` headers exist only on tools/call and must mirror a value the body's arguments carry.

    When the gateway has seen the tool listed, its input schema's ``x-mcp-header`` map decides exactly, as the
    server does: each declared header equal to its argument and present exactly when the argument is (a 2026
    request omitting one is refused too), no undeclared one. Otherwise a header value the arguments do not carry is
    a claim the body does not back, and is refused.
    """
    params = [h for h in headers if h.startswith(PARAM_PREFIX)]
    method = message.get("method")
    if params and method != "tools/call":
        raise HeaderMismatch(f"{params[0]} header on a request that is not tools/call")
    if method != "tools/call":
        return
    body = message.get("params")  # any JSON value a client sent: only an object has a name and arguments
    name = body.get("name") if isinstance(body, dict) else None
    args = body.get("arguments") if isinstance(body, dict) else None
    known = declared(name) if declared is not None and isinstance(name, str) else None
    if known is not None and (params or stateless):
        why = known.mismatch(headers, args if isinstance(args, dict) else {})
        if why is not None:
            raise HeaderMismatch(why)
    if not params or known is not None:
        return
    carried = _scalars(args, set()) if isinstance(args, dict) else set()
    for h in params:
        decoded = decode_header_value(headers[h])
        if decoded is None or decoded not in carried:
            raise HeaderMismatch(f"{h} header does not match any argument of the request body")


class RunTracker:
    """The recording unit of stateless traffic: one *run* of one client, the same on every worker and replica.

    A run is every request with the same issuer + subject, server, access token (hash) and client info within one
    window of ``window_s`` seconds (``recording.run_idle_gap_s``), windows aligned to the epoch. The id is computed
    from the request alone (no state), so every worker of every replica sharing ``auth.session_secret_file`` names
    the same unit and each writes its own signed stream of it. A W3C ``traceparent`` overrides the window: requests
    of one trace are one run (whatever their timing), requests of another trace another. The id is an HMAC with the
    session key (names no identity, cannot be guessed or computed by a client) and is path-safe. Limit: a client
    active across a window boundary continues in the next window's run (same key part, ``r-<key>-<window start>``).
    """

    def __init__(self, window_s: float, secret: bytes = b"") -> None:
        self.window_s = window_s
        self._secret = secret

    def unit(self, key: Sequence[str], now: float, traceparent: str | None = None) -> str:
        """The run this request belongs to: its key's run of the window ``now`` falls in, or of its trace."""
        digest = _digest(key, self._secret)
        trace = _trace_id(traceparent)
        if trace is not None:
            return f"t-{digest[:16]}-{trace}"
        start = math.floor(now / self.window_s) * self.window_s
        return f"r-{digest[:16]}-{round(start * 1000):x}"


def run_key(
    issuer: str, subject: str, server: str, credential: str, client_info: Mapping[str, Any] | None
) -> tuple[str, ...]:
    """The fields that make two stateless requests one run (the credential is hashed, never kept)."""
    info = client_info or {}
    return (
        issuer,
        subject,
        server,
        hashlib.sha256(credential.encode()).hexdigest(),
        str(info.get("name", "")),
        str(info.get("version", "")),
    )


def _digest(parts: Sequence[str], secret: bytes) -> str:
    h = hmac.new(secret, digestmod=hashlib.sha256)
    for p in parts:
        b = p.encode()
        h.update(len(b).to_bytes(4, "big") + b)
    return h.hexdigest()


def _trace_id(traceparent: str | None) -> str | None:
    """The trace id of a valid W3C traceparent (``00-<32 hex>-<16 hex>-<2 hex>``), else None."""
    if not traceparent:
        return None
    parts = traceparent.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16:
        return None
    trace = parts[1].lower()
    if trace == "0" * 32 or any(c not in "0123456789abcdef" for c in trace):
        return None
    return trace
