"""Server-Sent Events framing that survives events split across arbitrary body chunks.

Per chunk the work is proportional to the chunk: only the unterminated tail is carried over and
only new bytes (plus a 3-byte overlap for a boundary split in two) are scanned for boundaries.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An event ends at a blank line: two line endings in a row, each CRLF, LF or CR (mixed is allowed: "\n\r\n").
_EOL = rb"(?:\r\n|\r(?!\n)|\n)"
_BOUNDARY = re.compile(_EOL + _EOL)
_LINE = re.compile(rb"\r\n|\n|\r")


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched SSE event (the fields of the spec we care about) and its raw bytes."""

    data: str
    event: str = "message"
    id: str | None = None
    raw: bytes = b""


class SseParser:
    """Incremental SSE parser: ``feed`` chunks, get complete events; ``finish`` returns the leftover tail."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Add a chunk; return the events completed by it."""
        scan_from = max(0, len(self._buf) - 3)
        buf = self._buf + chunk
        events: list[SseEvent] = []
        start = 0
        for m in _BOUNDARY.finditer(buf, scan_from):
            if m.start() < start:  # overlap with a boundary already consumed
                continue
            if m.end() == len(buf) and buf.endswith(b"\r"):  # maybe the first half of a CRLF: wait for more
                break
            block, raw = buf[start : m.start()], buf[start : m.end()]
            start = m.end()
            event = parse_event(block, raw)
            if event is not None:
                events.append(event)
        self._buf = buf[start:]
        return events

    def finish(self) -> bytes:
        """Bytes after the last complete event (a truncated stream); empty when the stream ended cleanly."""
        rest, self._buf = self._buf, b""
        return rest


def parse_event(block: bytes, raw: bytes) -> SseEvent | None:
    """Parse one event block (lines without the terminating blank line); comments-only blocks give None."""
    data: list[str] = []
    event = "message"
    event_id: str | None = None
    seen = False
    for line in _LINE.split(block):
        if not line or line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        text = value.decode("utf-8", errors="replace")
        if name == b"data":
            data.append(text)
            seen = True
        elif name == b"event":
            event = text or "message"
            seen = True
        elif name == b"id":
            event_id = text
            seen = True
    if not seen:
        return None
    return SseEvent(data="\n".join(data), event=event, id=event_id, raw=raw or block)
