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


class RequestState:
    """Sealing and opening request state for one caller at one server (``scope``)."""

    def __init__(self, principal: Principal, scope: str, key: bytes) -> None:
        self.principal, self.scope, self.key = principal, scope, key

    def open(self, message: dict[str, Any], body: bytes) -> bytes | None:
        """The body to forward with the state the server issued in place of the sealed one a retry carries; None
        when the request carries none. ``RequestStateNotYours`` / ``InvalidRequest`` refuse it."""
        params = message.get("params")
        sealed = params.get("requestState") if isinstance(params, dict) else None
        if sealed is None:
            return None
        if not isinstance(sealed, str):
            raise InvalidRequest("params.requestState must be a string")
        state = open_sealed(sealed, self.principal, self.scope, self.key)
        for ensure_ascii in (False, True):  # the client's own JSON spelling of the value, found exactly once
            spelled = json.dumps(sealed, ensure_ascii=ensure_ascii).encode()
            if body.count(spelled) == 1:
                return body.replace(spelled, json.dumps(state, ensure_ascii=False).encode())
        raise InvalidRequest("params.requestState is spelled ambiguously in the request body")

    def seal(self, message: dict[str, Any]) -> dict[str, Any]:
        """An input_required result on its way to the client: its requestState sealed to the caller and server."""
        result = message.get("result")
        if not isinstance(result, dict) or not isinstance(state := result.get("requestState"), str):
            return message
        sealed = seal(state, self.principal, self.scope, self.key)
        return {**message, "result": {**result, "requestState": sealed}}
