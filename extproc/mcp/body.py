"""Rewriting JSON-RPC messages inside response bodies: one JSON document, or SSE events as they stream.

A rewrite function takes one message (a dict) and returns it changed, or the same object when it has nothing to
change; unchanged bytes pass exactly as the server sent them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import takewhile
from typing import Any

from extproc.mcp.jsonrpc import loads
from extproc.mcp.sse import HoldBudget, SseEvent, SseParser, format_event

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]
Screen = tuple[Rewrite, Callable[[bytes], bool]]  # a rewrite, and which events' bytes it must see (results.py)


def _apply(doc: Any, fn: Rewrite) -> tuple[Any, bool]:
    if isinstance(doc, list):  # a batch of responses
        out = [_apply(m, fn) for m in doc]
        return [m for m, _ in out], any(changed for _, changed in out)
    if isinstance(doc, dict):
        new = fn(doc)
        return new, new is not doc
    return doc, False


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def dumps(doc: Any) -> str:
    """Compact JSON as MCP servers write it; all in ``\\u`` escapes when a string holds a lone surrogate (JSON may
    carry one as an escape, UTF-8 cannot: before, writing it failed the exchange)."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    if not text.isascii() and _LONE_SURROGATE.search(text) is not None:
        return json.dumps(doc, separators=(",", ":"))
    return text


def rewrite_json(body: bytes, fn: Rewrite) -> bytes:
    """A whole JSON body with ``fn`` applied to each message; unparseable or unchanged bodies come back as is."""
    try:
        doc = loads(body)
    except ValueError:
        return body
    new, changed = _apply(doc, fn)
    return dumps(new).encode() if changed else body


def rewrite_sse(body: bytes, screen: Screen) -> bytes:
    """A whole SSE body with ``screen``'s rewrite applied to the events its test picks (others as they are)."""
    rewriter = SseRewriter(_same, None, None, screen)
    out, _ = rewriter.feed(body)
    return out + rewriter.finish()


class SseRewriter:
    """Streams SSE through ``fn``: each complete event leaves as soon as it is complete, rewritten only when
    ``fn`` changed one of its messages; an event split across chunks is held until its end arrives.

    Only events whose bytes contain ``needle`` are parsed as JSON at all, so a long stream costs a substring
    search per event. An event the parser withholds (too big to hold) cannot be checked: from then on nothing more
    is released (``refused``), never an unchecked event.
    """

    def __init__(
        self, fn: Rewrite, needle: bytes | None, parser: SseParser | None = None, screen: Screen | None = None
    ) -> None:
        self._fn = fn
        self._needle = needle
        self._screen = screen  # a second rewrite (after fn), for the events its test picks
        self.parser = parser or SseParser()  # the events as the server sent them (what is recorded)
        self._parts: list[bytes] = []  # bytes received and not yet released (an unfinished event, comments before it)
        self._released = 0  # bytes of the stream released (or refused) so far
        self.refused = False

    def feed(self, chunk: bytes) -> tuple[bytes, list[SseEvent]]:
        """The bytes to release for this chunk, and the events it completed (as the server sent them)."""
        events = self.parser.feed(chunk)
        if self.refused:
            return b"", events
        if chunk:
            self._parts.append(chunk)
        refuse = self.parser.skipping or any(e.withheld for e in events)
        good = list(takewhile(lambda e: e.withheld is None, events))  # the events before one too big to check
        done = self.parser.consumed - self._released  # bytes of complete blocks among those held
        if done <= 0 and not refuse:
            return b"", events
        pending = b"".join(self._parts)
        region, rest = pending[:done], pending[done:]
        out = bytearray()
        pos = 0
        for ev in good:
            at = region.find(ev.raw, pos)
            if at < 0:  # cannot locate it: release everything up to here untouched rather than guess
                break
            out += region[pos:at]
            out += self._rewrite(ev)
            pos = at + len(ev.raw)
        if refuse:  # nothing from the unchecked event on
            self.refused, self._parts = True, []
            return bytes(out), events
        out += region[pos:]
        self._parts = [rest] if rest else []
        self._released += done
        return bytes(out), events

    def finish(self) -> bytes:
        """Whatever is still held at the end of the stream (an event the server never finished), untouched."""
        rest, self._parts = b"".join(self._parts), []
        return b"" if self.refused else rest

    def _rewrite(self, ev: SseEvent) -> bytes:
        needed = self._needle is not None and self._needle in ev.raw
        screened = self._screen is not None and self._screen[1](ev.raw)
        if not (needed or screened):
            return ev.raw
        try:
            doc = loads(ev.data)
        except ValueError:
            return ev.raw
        new, changed = _apply(doc, self._fn) if needed else (doc, False)
        if screened and self._screen is not None:
            new, more = _apply(new, self._screen[0])
            changed = changed or more
        return format_event(dumps(new), ev.event, ev.id) if changed else ev.raw


def _same(message: dict[str, Any]) -> dict[str, Any]:
    return message


@dataclass(frozen=True, slots=True)
class Piece:
    """Something of a response to record: one SSE event, one whole JSON document, or raw bytes."""

    raw: bytes
    event: SseEvent | None = None  # an SSE event
    document: bool = False  # a whole JSON document (parsed when recorded)


class ResponseBody:
    """Reads one response body as it streams, in the framing its Content-Type names.

    SSE: events as they complete (optionally rewritten for the client as they pass, see ``SseRewriter``); an event
    over ``max_json`` bytes, or one the worker's ``budget`` cannot hold, is withheld (size and SHA-256) while its
    bytes stream on. JSON: one document at the end; past ``max_json`` bytes (or the budget) it is too big to hold
    and goes on as raw chunks (``oversized``). Anything else: raw chunks. Per chunk the work is proportional to
    the chunk.

    When an event that must be rewritten is withheld, nothing more of the body reaches the client but the bytes
    ``refusal()`` returns (``refused``).
    """

    def __init__(
        self,
        content_type: str,
        max_json: int,
        rewrite: Rewrite | None = None,
        budget: HoldBudget | None = None,
        refusal: Callable[[], bytes] = bytes,
        screen: Screen | None = None,
    ) -> None:
        self.sse = content_type.startswith("text/event-stream")
        self.oversized = False
        self.oversized_reason = ""
        self._max_json = max_json
        self._budget = budget
        self._charged = 0
        self._refusal = refusal
        self._parser = SseParser(max_json, budget) if self.sse else None
        self._rewriter = (
            SseRewriter(rewrite or _same, b'"requestState"' if rewrite else None, self._parser, screen)
            if self._parser is not None and (rewrite or screen)
            else None
        )
        self._json: bytearray | None = bytearray() if content_type.startswith("application/json") else None
        self._ended = False

    @property
    def rewriting(self) -> bool:
        """True when SSE events are rewritten as they pass: the client gets the bytes ``feed`` returns."""
        return self._rewriter is not None

    @property
    def refused(self) -> bool:
        return self._rewriter is not None and self._rewriter.refused

    def feed(self, chunk: bytes) -> tuple[list[Piece], bytes | None]:
        """The pieces this chunk completes, and (when rewriting) the bytes to send in its place."""
        if self._rewriter is not None:
            was_refused = self._rewriter.refused
            out, events = self._rewriter.feed(chunk)
            if self._rewriter.refused and not was_refused:
                out += self._refusal()
            return [Piece(e.raw, e) for e in events], out
        if self._parser is not None:
            return [Piece(e.raw, e) for e in self._parser.feed(chunk)], None
        if self._json is not None:
            if len(self._json) + len(chunk) <= self._max_json and self._take(len(chunk)):
                self._json += chunk
                return [], None
            self.oversized_reason = (
                "JSON body over recording.max_event_body_bytes"
                if len(self._json) + len(chunk) > self._max_json
                else "JSON body not held: the worker holds recording.max_held_body_bytes of unfinished bodies"
            )
            raw, self._json, self.oversized = bytes(self._json) + chunk, None, True
            self._release()
            return [Piece(raw)], None
        return ([Piece(chunk)] if chunk else []), None

    def end(self) -> tuple[list[Piece], bytes]:
        """At the end of the stream (or when it stopped): what is left to record, and to release (rewriting)."""
        if self._ended:
            return [], b""
        self._ended = True
        release = self._rewriter.finish() if self._rewriter is not None else b""
        if self._parser is not None:
            events, tail = self._parser.finish()  # a final bare CR completes the last event
            return [Piece(e.raw, e) for e in events] + ([Piece(tail)] if tail.strip() else []), release
        if self._json is not None:
            raw, self._json = bytes(self._json), None
            self._release()
            return [Piece(raw, document=True)], release
        return [], release

    def _take(self, n: int) -> bool:
        if self._budget is None:
            return True
        if not self._budget.take(n):
            return False
        self._charged += n
        return True

    def _release(self) -> None:
        if self._budget is not None and self._charged:
            self._budget.give(self._charged)
        self._charged = 0
