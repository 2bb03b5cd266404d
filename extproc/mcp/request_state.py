"""Multi-round-trip requests (2026-07-28): a server that needs input answers ``input_required`` with a
``requestState``; the client retries the call carrying it. Toward the client that state is sealed to the caller
and the server (``authn/state_binding.py``), so another caller, or the same caller at another server, cannot
replay it; the server gets back exactly the state it issued.
"""

from __future__ import annotations

import json
from typing import Any

from extproc.authn.principal import Principal
from extproc.authn.state_binding import open_sealed, seal
from extproc.errors import InvalidRequest
from extproc.mcp.jsonrpc import fold_key

_KEY = "requestState"
_FOLDED = fold_key(_KEY)


class RequestState:
    """Sealing and opening request state for one caller at one server (``scope``)."""

    def __init__(self, principal: Principal, scope: str, key: bytes) -> None:
        self.principal, self.scope, self.key = principal, scope, key

    def open(self, message: dict[str, Any]) -> bytes | None:
        """The body to forward with the state the server issued in place of the sealed one a retry carries; None
        when the request carries none. ``RequestStateNotYours`` / ``InvalidRequest`` refuse it.

        The state is put back exactly at ``params.requestState`` of the message the policy decided on, and that
        message is what the server gets: a search of the body's bytes for the sealed value could land anywhere else
        it is spelled (an argument), where policy and recording would have seen the sealed value.
        """
        params = message.get("params")
        if not isinstance(params, dict):
            return None
        for key in params:  # a decoder that folds case would read this as requestState: the gateway would not
            if key != _KEY and fold_key(key) == _FOLDED:
                raise InvalidRequest(f"params key {key[:40]!r} is ambiguous (case or Unicode folding of {_KEY!r})")
        sealed = params.get(_KEY)
        if sealed is None:
            return None
        if not isinstance(sealed, str):
            raise InvalidRequest("params.requestState must be a string")
        state = open_sealed(sealed, self.principal, self.scope, self.key)
        return _dumps({**message, "params": {**params, _KEY: state}})

    def seal(self, message: dict[str, Any]) -> dict[str, Any]:
        """An input_required result on its way to the client: its requestState sealed to the caller and server."""
        result = message.get("result")
        if not isinstance(result, dict) or not isinstance(state := result.get("requestState"), str):
            return message
        sealed = seal(state, self.principal, self.scope, self.key)
        return {**message, "result": {**result, "requestState": sealed}}


def _dumps(message: dict[str, Any]) -> bytes:
    """Compact JSON of a parsed request; a lone surrogate (from a ``\\ud800`` escape) keeps its escape."""
    try:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(message, separators=(",", ":")).encode()
