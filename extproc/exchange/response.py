"""The response side of an exchange, as plain functions the phases call (phases.py): the headers the client
gets, a buffered body rewritten for the caller (lists filtered, request state sealed), and what replaces an SSE
body that cannot be checked.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Literal

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.admission import SESSION_HEADER, Admitted
from extproc.authn.principal import Principal
from extproc.authn.session_binding import bind
from extproc.envoy import responses
from extproc.exchange.decide import Decisions
from extproc.exchange.request import Seal
from extproc.mcp.body import ResponseBody, Screen, dumps
from extproc.mcp.jsonrpc import error_response
from extproc.mcp.param_headers import ParamHeaderMaps
from extproc.mcp.sse import format_event
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import filter_body
from extproc.recording.events import ListFiltered
from extproc.runtime import ExchangeOptions

log = logging.getLogger(__name__)

# Tells a stateless (2026-07-28) client which recorded run its request joined; it has no session id to go by.
RECORDING_HEADER = "mcp-extproc-recording"

ListHook = Callable[[str, dict[str, Any]], None]
ListReview = Callable[[str, dict[str, Any]], dict[str, Any]]
Buffered = Literal["filter", "seal", "screen"] | None  # the whole body comes in one message, to be rewritten


def framing(
    opts: ExchangeOptions,
    headers: dict[str, str],
    ok: bool,
    seal: Seal | None,
    filtering: bool,
    withheld: Callable[[], bytes],
    screen: Screen | None = None,
) -> tuple[ResponseBody, Buffered]:
    """How the response body is read and rewritten. List responses (and JSON results that may carry request
    state, or that a result screen may refuse: ``screen``, exchange/results.py) are rewritten for the caller, so
    this one body is buffered; all others keep streaming (SSE events through ``screen`` as they complete)."""
    content_type = headers.get("content-type", "")
    screen = screen if ok else None
    body = ResponseBody(content_type, opts.max_event_body_bytes, seal if ok else None, opts.held, withheld, screen)
    if ok and filtering:
        return body, "filter"
    if ok and seal is not None and content_type.startswith("application/json"):
        return body, "seal"
    if screen is not None and content_type.startswith("application/json"):
        return body, "screen"
    return body, None


def client_headers(
    key: bytes, who: Principal | None, admitted: Admitted | None, server_session: str | None, run: str | None
) -> dict[str, str]:
    """The client only ever sees the bound session id; a stateless client learns its recorded run."""
    out = {}
    if server_session and who is not None and admitted is not None:
        out[SESSION_HEADER] = bind(server_session, who, key, admitted.scope)
    if run is not None:
        out[RECORDING_HEADER] = run
    return out


def filtered_lists(
    policy: CompiledPolicy,
    who: Principal,
    server: str,
    decisions: Decisions,
    body: bytes,
    sse: bool,
    learn: ListHook,
    review: ListReview | None,
    after: Callable[[bytes, bool], bytes] | None = None,
) -> ep.ProcessingResponse:
    """A buffered list response filtered for its caller; what was hidden goes on the record. ``after``: what the
    body's other results go through (results.py, guard.py), when the batch holds calls too."""
    filtered, hidden = filter_body(policy, who, server, decisions.lists, body, sse, decisions.facts, learn, review)
    filtered = after(filtered, sse) if after is not None else filtered
    for method, msg_id, names in hidden:
        decisions.log.emit(ListFiltered(method=method, message_id=msg_id, hidden=names))
    return responses.response_body(replace=filtered)


def learn_tools(maps: ParamHeaderMaps, scope: str) -> ListHook:
    """What a tools/list result teaches: its tools' x-mcp-header maps (mcp/param_headers.py)."""

    def learn(method: str, result: dict[str, Any]) -> None:
        if method == "tools/list":
            maps.learn(scope, result)

    return learn


def withheld_body(exchange_id: str, awaiting: set[str]) -> bytes:
    """What the client gets instead of an SSE body that must be rewritten but holds an event too big to check:
    an error for each request still unanswered, and nothing more of the body."""
    log.warning("exchange %s: SSE event too big to check for request state; rest of the body withheld", exchange_id)
    message = "the server's response holds an event too big for the gateway to check; withheld"
    return b"".join(format_event(dumps(error_response(json.loads(i), -32603, message))) for i in sorted(awaiting))
