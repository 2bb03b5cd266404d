"""Rewriting JSON-RPC messages inside response bodies: one JSON document, or SSE events as they stream.

A rewrite function takes one message (a dict) and returns it changed, or the same object when it has nothing to
change; unchanged bytes pass exactly as the server sent them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
