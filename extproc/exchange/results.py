"""The tool-surface screens (extproc/tools/screens.py) on what a call returns.

A tools/call, prompts/get or resources/read result is text a model reads. Two policies per call's item:

``screens.results`` (invisible characters): tag characters, zero-width and bidi controls are never legitimate text
for a model. At ``strip`` (the default) they are removed from the response body as it streams (``ByteStripper``:
their UTF-8 bytes and their JSON escapes, without parsing or holding the body); at ``alarm`` they pass. A batch
whose body holds other responses too (a list, a result screened with ``alarm``) is screened per element instead,
as each single message would be: a JSON body is buffered and only the results at ``strip`` are stripped.

``screens.result_markers`` (instruction markers addressed to the model, other servers' tool names: the rules the
description screens use): at ``alarm`` (the default) they pass; at ``refuse`` the client gets a JSON-RPC error in
place of the result. A JSON body is then buffered (Envoy holds it, up to its buffer limit) and screened whole
before any of it is sent; an SSE body is rewritten event by event (mcp/body.py ``SseRewriter``): each event is held
until complete, and the one carrying a refused result is replaced by the error event. Nothing before it is held.

Either way a ``result.screened`` event says where (JSON pointer into the result, span) and what was done, and the
response event keeps what the server sent. Finding them costs a byte scan of each recorded piece (a memchr-fast
check for invisible characters; one DFA pass for the markers' words, ``may_hold_markers``); only a piece that may
hold one is parsed and screened exactly. Pieces are whole SSE events or whole JSON documents: a marker split across
network chunks is whole in its piece, so no carry is needed between chunks.
"""

from __future__ import annotations

import json
from typing import Any

from extproc.exchange.decide import describe
from extproc.mcp.body import Piece, Screen, rewrite_json, rewrite_sse
from extproc.mcp.jsonrpc import McpCall, error_response, loads
from extproc.policy.capture import drops_values
from extproc.policy.compiled import CompiledPolicy
from extproc.recording.events import ResultScreened
from extproc.recording.exchange_log import ExchangeLog
from extproc.tools.invisible import ByteStripper, may_hold_invisible, strip_invisible_bytes
from extproc.tools.screens import CrossNames, Finding, may_hold_markers, scan, strip_invisible
from extproc.tools.surface import Surface

SCREENED = frozenset({"tools/call", "prompts/get", "resources/read"})
REFUSED_MESSAGE = "the gateway withheld this result: it holds instructions addressed to the model (recorded)"
REFUSED_CODE = -32603


class ResultScreen:
    """The results of one exchange's calls: what is found in them goes on the record; ``stripper`` cleans the
    whole body for the client as it streams when every response it holds is a result screened with ``strip``;
    otherwise (a batch that also holds a list, or calls screened otherwise) each result is stripped as its own
    setting says, as the single message would be: ``rewrite`` per message, in a buffered JSON body or SSE events
    as they stream. A result with markers is replaced by an error the same way."""

    def __init__(
        self,
        policy: CompiledPolicy,
        server: str,
        log: ExchangeLog,
        calls: dict[str, tuple[McpCall, str, str]],
        cross: CrossNames | None,
        answered: int | None = None,  # responses the body holds (requests with an id); None: one per call here
    ) -> None:
        self._policy = policy
        self._server = server
        self._log = log
        self._calls = calls  # JSON of the request id -> (the call, screens.results, screens.result_markers)
        self._cross = cross
        self._invisible = any(r != "ignore" for _, r, _ in calls.values())
        self._markers = any(m != "ignore" for _, _, m in calls.values())
        self._refused: set[str] = set()  # ids whose result the client got as an error
        self.buffering = False  # the whole JSON body is screened before it is sent (``buffered``)
        strips = {k for k, (_, r, _) in calls.items() if r == "strip"}
        # The whole body is the stripped results only when the exchange expects no other response (a list, a
        # result screened otherwise): then it is stripped as it streams, bytes only. Else per message.
        whole = bool(strips) and len(strips) == (len(calls) if answered is None else answered)
        self.stripper = ByteStripper() if whole else None
        self._strips = frozenset() if whole else frozenset(strips)  # ids whose results ``rewrite`` strips
        self.rewrites = any(m == "refuse" for _, _, m in calls.values()) or bool(self._strips)

    @classmethod
    def of(
        cls,
        policy: CompiledPolicy,
        server: str,
        log: ExchangeLog,
        calls: tuple[McpCall, ...],
        surface: Surface | None = None,
    ) -> ResultScreen | None:
        """The screen for an exchange's results; None when no call of it returns a screened result."""
        screened = {}
        for c in calls:
            if c.method not in SCREENED or c.id is None:
                continue
            screens = policy.integrity(server, _item(c)).screens
            results, markers = screens["results"], screens.get("result_markers", "alarm")
            if results != "ignore" or markers != "ignore":
                screened[json.dumps(c.id)] = (c, results, markers)
        if not screened:
            return None
        cross = surface.cross(server) if surface is not None else None
        return cls(policy, server, log, screened, cross, sum(c.id is not None for c in calls))

    def may_hold(self, text: bytes) -> bool:
        """Whether ``text`` (a piece, an event) may hold something a screen of these calls finds. A notification
        (progress, log lines: most events of a long stream) has no ``"result"`` key, spelled plainly or with an
        escape of an ASCII letter: two memchr-fast checks leave it."""
        if b'"result"' not in text and b"\\u00" not in text:
            return False
        return (self._invisible and may_hold_invisible(text)) or (self._markers and may_hold_markers(text, self._cross))

    def note(self, piece: Piece) -> None:
        """Record what a recorded piece (an SSE event, a JSON document) holds in a result, and what was done."""
        if not self.may_hold(piece.raw):  # an event's raw bytes hold every form its data holds: no copy
            return
        text = piece.event.data.encode() if piece.event is not None else piece.raw
        try:
            doc = loads(text)
        except ValueError:
            return
        for message in doc if isinstance(doc, list) else [doc]:
            key = json.dumps(message.get("id")) if isinstance(message, dict) else None
            entry = self._calls.get(key) if key is not None else None
            if entry is None or "result" not in message:
                continue
            call, results, markers = entry
            found = scan(message["result"], self._cross, everywhere=True)
            what = describe(self._policy, self._server, call)
            invisible = [f.to_record() for f in found if f.screen == "invisible"] if results != "ignore" else []
            if invisible:
                action = results  # strip: out before the client saw it (the whole body, or this result)
                self._log.emit(ResultScreened(message_id=call.id, call=what, action=action, findings=invisible))
            marked = [f.to_record() for f in _markers(found)] if markers != "ignore" else []
            if marked and drops_values(self._policy.capture(self._server, [call.tool] if call.tool else ())):
                marked = [{**f, "excerpt": ""} for f in marked]  # shape/metadata: no text of the result is kept
            if marked:
                # an SSE event was rewritten before it is recorded; a buffered body is, once it is recorded
                refused = key in self._refused or (self.buffering and markers == "refuse")
                action = "refuse" if refused else "alarm"
                self._log.emit(ResultScreened(message_id=call.id, call=what, action=action, findings=marked))

    def rewrite(self, message: dict[str, Any]) -> dict[str, Any]:
        """``message`` as the client gets it: an error in place of a result whose markers its policy refuses; a
        result screened with ``strip`` in a body not stripped whole, without its invisible characters."""
        key = json.dumps(message.get("id"))
        entry = self._calls.get(key)
        if entry is None or "result" not in message:
            return message
        if entry[2] == "refuse" and _markers(scan(message["result"], self._cross, everywhere=True)):
            self._refused.add(key)
            return error_response(message.get("id"), REFUSED_CODE, REFUSED_MESSAGE)
        if key in self._strips:
            stripped = strip_invisible(message["result"])
            return message if stripped is message["result"] else {**message, "result": stripped}
        return message

    def buffered(self, body: bytes, sse: bool = False) -> bytes:
        """A whole body (JSON, or SSE when a list in the same batch buffered it) as the client gets it: refused
        results replaced, invisible characters stripped."""
        if self.rewrites and self.may_hold(body):
            body = rewrite_sse(body, (self.rewrite, self.may_hold)) if sse else rewrite_json(body, self.rewrite)
        if self.stripper is not None:
            body = strip_invisible_bytes(body)
        return body

    def sse_rewrite(self) -> Screen | None:
        """(rewrite, which events to parse for it) for an SSE body, when a result may have to be refused (or
        stripped on its own: a batch not stripped whole)."""
        return (self.rewrite, self.may_hold) if self.rewrites else None


def _markers(found: list[Finding]) -> list[Finding]:
    return [f for f in found if f.screen != "invisible"]


def _item(call: McpCall) -> str | None:
    return call.tool or call.prompt or call.uri
