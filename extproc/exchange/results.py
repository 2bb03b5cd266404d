"""Invisible characters in what a call returns (the tool-surface screens, extproc/tools/screens.py, on results).

A tools/call, prompts/get or resources/read result is text a model reads. Tag characters, zero-width and bidi
controls in it are never legitimate text for a model. With the policy's ``screens.results`` at ``strip`` (the
default) they are removed from the response body as it streams (``ByteStripper``: their UTF-8 bytes and their JSON
escapes, without parsing or holding the body); at ``alarm`` they pass. Either way a ``result.screened`` event says
where (JSON pointer into the result, span) and what was done, and the response event keeps what the server sent.
Finding them costs a byte scan of each recorded piece; only a piece that may hold one is parsed for the screen.
"""

from __future__ import annotations

import json

from extproc.exchange.decide import describe
from extproc.mcp.body import Piece
from extproc.mcp.jsonrpc import McpCall, loads
from extproc.policy.compiled import CompiledPolicy
from extproc.recording.events import ResultScreened
from extproc.recording.exchange_log import ExchangeLog
from extproc.tools.screens import ByteStripper, may_hold_invisible, scan

SCREENED = frozenset({"tools/call", "prompts/get", "resources/read"})


class ResultScreen:
    """The results of one exchange's calls: what is found in them goes on the record; ``stripper`` cleans the
    body for the client when any of them is screened with ``strip`` (a batch is stripped whole)."""

    def __init__(self, policy: CompiledPolicy, server: str, log: ExchangeLog, calls: dict[str, McpCall]) -> None:
        self._policy = policy
        self._server = server
        self._log = log
        self._calls = calls  # JSON of the request id -> the call whose result is screened
        strips = any(policy.integrity(server, _item(c)).screens["results"] == "strip" for c in calls.values())
        self.stripper = ByteStripper() if strips else None

    @classmethod
    def of(
        cls, policy: CompiledPolicy, server: str, log: ExchangeLog, calls: tuple[McpCall, ...]
    ) -> ResultScreen | None:
        """The screen for an exchange's results; None when no call of it returns a screened result."""
        screened = {
            json.dumps(c.id): c
            for c in calls
            if c.method in SCREENED
            and c.id is not None
            and policy.integrity(server, _item(c)).screens["results"] != "ignore"
        }
        return cls(policy, server, log, screened) if screened else None

    def note(self, piece: Piece) -> None:
        """Record where a recorded piece (an SSE event, a JSON document) holds invisible characters in a result."""
        if not may_hold_invisible(piece.raw):  # an event's raw bytes hold every form its data holds: no copy
            return
        text = piece.event.data.encode() if piece.event is not None else piece.raw
        try:
            doc = loads(text)
        except ValueError:
            return
        for message in doc if isinstance(doc, list) else [doc]:
            call = self._calls.get(json.dumps(message.get("id"))) if isinstance(message, dict) else None
            if call is None or "result" not in message:
                continue
            findings = [f.to_record() for f in scan(message["result"]) if f.screen == "invisible"]
            if findings:
                action = "strip" if self.stripper is not None else "alarm"
                what = describe(self._policy, self._server, call)
                self._log.emit(ResultScreened(message_id=call.id, call=what, action=action, findings=findings))


def _item(call: McpCall) -> str | None:
    return call.tool or call.prompt or call.uri
