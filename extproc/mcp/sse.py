"""Server-Sent Events, read and written as the WHATWG HTML standard's event-stream rules say.

Reading (``SseParser``) survives events split across arbitrary body chunks: per chunk the work is proportional
to the chunk; only the unterminated tail is carried over and only new bytes (plus a 3-byte overlap for a boundary
split in two) are scanned for boundaries. The rules followed (html.spec.whatwg.org, "Parsing an event stream"):

- one UTF-8 byte order mark at the very start of the stream is dropped;
- a line ends with CRLF, LF or a bare CR; a CR at the end of a chunk may be half a CRLF, so it waits for the next
  chunk or for the end of the stream (where it is a line end);
- a line starting with ':' is a comment; a line without ':' is a field name with an empty value; one space after
  the ':' is dropped; unknown field names are ignored;
- ``data`` lines are joined with LF; ``event`` names the type ("message" when empty); ``id`` sets the last event
  id (ignored when it contains NUL); ``retry`` is a reconnection time (ignored unless all ASCII digits);
- a blank line dispatches the event, but only if a ``data`` field was seen (``event:`` alone dispatches nothing);
- at the end of the stream, an event without its terminating blank line is discarded, never dispatched.

Writing (``format_event``) is the inverse: what it writes parses back to the same fields.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# An event ends at a blank line: two line endings in a row, each CRLF, LF or CR (mixed is allowed: "\n\r\n").
_EOL = rb"(?:\r\n|\r(?!\n)|\n)"
_BOUNDARY = re.compile(_EOL + _EOL)
_LINE = re.compile(rb"\r\n|\n|\r")
_BOM = b"\xef\xbb\xbf"
_NEWLINES = re.compile(r"\r\n|\n|\r")


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One event block of the stream: its fields and raw bytes.

    ``dispatched`` is False for a block the client does not dispatch (no ``data`` field) that still changes the
    client's state (an ``id`` or ``retry`` field) or names an event type; such blocks are returned so a rewriter
    can keep their effect and a recorder can keep them.
    """

    data: str
    event: str = "message"
    id: str | None = None  # the id field of this block ("" resets the last event id), None when absent
    raw: bytes = b""
    retry: int | None = None
    dispatched: bool = True


class SseParser:
    """Incremental SSE parser: ``feed`` chunks, get complete event blocks; ``finish`` at the end of the stream."""

    def __init__(self) -> None:
        self._buf = b""
        self._at_start = True  # the BOM is looked for only at the very start

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Add a chunk; return the event blocks completed by it."""
        return self._scan(chunk, final=False)

    def finish(self) -> tuple[list[SseEvent], bytes]:
        """End of stream: the blocks a final bare CR completes, and the discarded incomplete tail (not dispatched).

        The parser is reset and can read a new stream afterwards.
        """
        events = self._scan(b"", final=True)
        rest, self._buf, self._at_start = self._buf, b"", True
        return events, rest

    def _scan(self, chunk: bytes, final: bool) -> list[SseEvent]:
        scan_from = max(0, len(self._buf) - 3)
        buf = self._buf + chunk
        if self._at_start:
            if not final and len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._buf = buf  # maybe a BOM cut in two: wait
                return []
            self._at_start = False
            if buf.startswith(_BOM):
                buf, scan_from = buf[len(_BOM) :], 0
        events: list[SseEvent] = []
        start = 0
        for m in _BOUNDARY.finditer(buf, scan_from):
            if m.start() < start:  # overlap with a boundary already consumed
                continue
            if not final and m.end() == len(buf) and buf.endswith(b"\r"):  # maybe half a CRLF: wait for more
                break
            block, raw = buf[start : m.start()], buf[start : m.end()]
            start = m.end()
            event = parse_event(block, raw)
            if event is not None:
                events.append(event)
        self._buf = buf[start:]
        return events


def parse_event(block: bytes, raw: bytes = b"") -> SseEvent | None:
    """Parse one event block (lines without the terminating blank line); None for a block with no effect."""
    data: list[str] = []
    event = ""
    event_id: str | None = None
    retry: int | None = None
    named = False
    for line in _LINE.split(block):
        if not line or line.startswith(b":"):
            continue
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value.decode("utf-8", errors="replace"))
        elif name == b"event":
            event, named = value.decode("utf-8", errors="replace"), True
        elif name == b"id":
            if b"\x00" not in value:
                event_id = value.decode("utf-8", errors="replace")
        elif name == b"retry":
            if value.isdigit() and value.isascii():
                retry = int(value)
    if not data and event_id is None and retry is None and not named:
        return None
    return SseEvent(
        data="\n".join(data),
        event=event or "message",
        id=event_id,
        raw=raw or block,
        retry=retry,
        dispatched=bool(data),
    )


def format_event(data: str | None, event: str | None = None, id: str | None = None, retry: int | None = None) -> bytes:
    """One SSE event block, LF line ends, ending in a blank line. ``data=None`` writes a block that is not
    dispatched (only ``id``/``retry``). Raises ValueError for an event name or id a line end would split."""
    out = []
    if event is not None and event != "message":
        if _NEWLINES.search(event):
            raise ValueError("SSE event name contains a line end")
        out.append(f"event: {event}\n")
    if id is not None:
        if _NEWLINES.search(id) or "\x00" in id:
            raise ValueError("SSE id contains a line end or NUL")
        out.append(f"id: {id}\n")
    if retry is not None:
        out.append(f"retry: {int(retry)}\n")
    if data is not None:
        out.extend(f"data: {line}\n" for line in _NEWLINES.split(data))
    return ("".join(out) + "\n").encode()
