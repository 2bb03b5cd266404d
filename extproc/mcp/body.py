"""Rewriting JSON-RPC messages inside response bodies: one JSON document, or SSE events as they stream.

A rewrite function takes one message (a dict) and returns it changed, or the same object when it has nothing to
change; unchanged bytes pass exactly as the server sent them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from extproc.mcp.sse import SseEvent, SseParser, format_event

Rewrite = Callable[[dict[str, Any]], dict[str, Any]]


def _apply(doc: Any, fn: Rewrite) -> tuple[Any, bool]:
    if isinstance(doc, list):  # a batch of responses
        out = [_apply(m, fn) for m in doc]
        return [m for m, _ in out], any(changed for _, changed in out)
    if isinstance(doc, dict):
        new = fn(doc)
        return new, new is not doc
    return doc, False


def dumps(doc: Any) -> str:
    """Compact JSON as MCP servers write it."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def rewrite_json(body: bytes, fn: Rewrite) -> bytes:
    """A whole JSON body with ``fn`` applied to each message; unparseable or unchanged bodies come back as is."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    new, changed = _apply(doc, fn)
    return dumps(new).encode() if changed else body


class SseRewriter:
    """Streams SSE through ``fn``: each complete event leaves as soon as it is complete, rewritten only when
    ``fn`` changed one of its messages; an event split across chunks is held until its end arrives.

    Only events whose bytes contain ``needle`` are parsed as JSON at all, so a long stream costs a substring
    search per event.
    """

    def __init__(self, fn: Rewrite, needle: bytes) -> None:
        self._fn = fn
        self._needle = needle
        self.parser = SseParser()  # the events as the server sent them (what is recorded)
        self._pending = b""  # bytes received and not yet released (an unfinished event, comments before it)

    def feed(self, chunk: bytes) -> tuple[bytes, list[SseEvent]]:
        """The bytes to release for this chunk, and the events it completed (as the server sent them)."""
        self._pending += chunk
        events = self.parser.feed(chunk)
        out = bytearray()
        pos = 0
        for ev in events:
            at = self._pending.find(ev.raw, pos)
            if at < 0:  # cannot locate it: release everything up to here untouched rather than guess
                break
            out += self._pending[pos:at]
            out += self._rewrite(ev)
            pos = at + len(ev.raw)
        self._pending = self._pending[pos:]
        return bytes(out), events

    def finish(self) -> bytes:
        """Whatever is still held at the end of the stream (an event the server never finished), untouched."""
        rest, self._pending = self._pending, b""
        return rest

    def _rewrite(self, ev: SseEvent) -> bytes:
        if self._needle not in ev.raw:
            return ev.raw
        try:
            doc = json.loads(ev.data)
        except ValueError:
            return ev.raw
        new, changed = _apply(doc, self._fn)
        return format_event(dumps(new), ev.event, ev.id) if changed else ev.raw


@dataclass(frozen=True, slots=True)
class Piece:
    """Something of a response to record: one SSE event, one whole JSON document, or raw bytes."""

    raw: bytes
    event: SseEvent | None = None  # an SSE event
    document: bool = False  # a whole JSON document (parsed when recorded)


class ResponseBody:
    """Reads one response body as it streams, in the framing its Content-Type names.

    SSE: events as they complete (optionally rewritten for the client as they pass, see ``SseRewriter``). JSON:
    one document at the end; past ``max_json`` bytes it is too big to hold and goes on as raw chunks
    (``oversized``). Anything else: raw chunks. Per chunk the work is proportional to the chunk.
    """

    def __init__(self, content_type: str, max_json: int, rewrite: Rewrite | None = None) -> None:
        self.sse = content_type.startswith("text/event-stream")
        self.oversized = False
        self._max_json = max_json
        self._rewriter = SseRewriter(rewrite, b'"requestState"') if self.sse and rewrite is not None else None
        self._parser = self._rewriter.parser if self._rewriter is not None else (SseParser() if self.sse else None)
        self._json: bytearray | None = bytearray() if content_type.startswith("application/json") else None
        self._ended = False

    @property
    def rewriting(self) -> bool:
        """True when SSE events are rewritten as they pass: the client gets the bytes ``feed`` returns."""
        return self._rewriter is not None

    def feed(self, chunk: bytes) -> tuple[list[Piece], bytes | None]:
        """The pieces this chunk completes, and (when rewriting) the bytes to send in its place."""
        if self._rewriter is not None:
            out, events = self._rewriter.feed(chunk)
            return [Piece(e.raw, e) for e in events], out
        if self._parser is not None:
            return [Piece(e.raw, e) for e in self._parser.feed(chunk)], None
        if self._json is not None:
            self._json += chunk
            if len(self._json) <= self._max_json:
                return [], None
            raw, self._json, self.oversized = bytes(self._json), None, True
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
            return [Piece(raw, document=True)], release
        return [], release
