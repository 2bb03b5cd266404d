"""Server-Sent Events, read and written as the WHATWG HTML standard's event-stream rules say.

Reading (``SseParser``) survives events split across arbitrary body chunks, in time linear in the stream: each
byte is scanned for line ends once (``bytes.find``), an unfinished event is kept as a list of its chunks and joined
once when it completes. With ``max_event`` and a worker-wide ``HoldBudget``, an event is never held whole past either
bound: the rest of its bytes are only hashed, and it comes out as a withheld marker (size and SHA-256, and its
``event``/``id`` fields as far as they precede the data).

The rules followed (html.spec.whatwg.org, "Parsing an event stream"):

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

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

_BOM = b"\xef\xbb\xbf"
_LINE = re.compile(rb"\r\n|\n|\r")
_NEWLINES = re.compile(r"\r\n|\n|\r")
_FIELDS_PREFIX = 4096  # of a withheld event, the bytes read for its event/id fields
LF, CR = 10, 13


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One event block of the stream: its fields and raw bytes.

    ``dispatched`` is False for a block the client does not dispatch (no ``data`` field) that still changes the
    client's state (an ``id`` or ``retry`` field) or names an event type; such blocks are returned so a rewriter
    can keep their effect and a recorder can keep them.

    ``withheld`` (a reason) marks an event too big to hold: ``raw`` and ``data`` are empty, ``size`` and ``sha256``
    describe the bytes the server sent.
    """

    data: str
    event: str = "message"
    id: str | None = None  # the id field of this block ("" resets the last event id), None when absent
    raw: bytes = b""
    retry: int | None = None
    dispatched: bool = True
    withheld: str | None = None
    size: int = 0  # of a withheld event
    sha256: str = ""  # of a withheld event


class HoldBudget:
    """Bytes of unfinished response bodies a worker holds for parsing, over all its exchanges."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


EVENT_TOO_BIG = "SSE event over recording.max_event_body_bytes"
BUDGET_SPENT = "SSE event not held: the worker holds recording.max_held_body_bytes of unfinished bodies"


class SseParser:
    """Incremental SSE parser: ``feed`` chunks, get complete event blocks; ``finish`` at the end of the stream.

    ``consumed``: bytes of the stream (BOM included) that belong to complete blocks, returned or not.
    """

    def __init__(self, max_event: int | None = None, budget: HoldBudget | None = None) -> None:
        self._max_event = max_event
        self._budget = budget
        self._reset()

    def _reset(self) -> None:
        self._head: list[bytes] = []  # scanned bytes of the unfinished block (no boundary in them)
        self._head_len = 0
        self._tail = b""  # bytes from where scanning resumes: a line end whose meaning the next byte decides
        self._at_start = True  # the BOM is looked for only at the very start
        self._charged = 0  # bytes of _head taken from the budget
        self._skip: Any = None  # SHA-256 of a withheld block's bytes so far
        self._skip_size = 0
        self._skip_prefix = b""
        self._skip_reason = ""
        self.consumed = 0

    @property
    def skipping(self) -> bool:
        """True while the unfinished block is withheld (its bytes are not kept)."""
        return self._skip is not None

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Add a chunk; return the event blocks completed by it."""
        return self._scan(chunk, final=False)

    def finish(self) -> tuple[list[SseEvent], bytes]:
        """End of stream: the blocks a final bare CR completes, and the discarded incomplete tail (not dispatched;
        a withheld unfinished block comes back as a withheld event instead, with an empty tail).

        The parser is reset and can read a new stream afterwards.
        """
        events = self._scan(b"", final=True)
        if self._skip is not None:
            events.append(self._withheld(b""))
            rest = b""
        else:
            rest = b"".join(self._head) + self._tail
        self._release()
        self._reset()
        return events, rest

    def _scan(self, chunk: bytes, final: bool) -> list[SseEvent]:
        buf = self._tail + chunk if self._tail else chunk
        if self._at_start:
            if not final and len(buf) < len(_BOM) and _BOM.startswith(buf):
                self._tail = buf  # maybe a BOM cut in two: wait
                return []
            self._at_start = False
            if buf.startswith(_BOM):
                buf = buf[len(_BOM) :]
                self.consumed += len(_BOM)
        events: list[SseEvent] = []
        n = len(buf)
        start = pos = 0
        lf, cr = buf.find(b"\n"), buf.find(b"\r")  # the next LF / CR at or after pos (-1: none left in buf)
        while True:
            if 0 <= lf < pos:
                lf = buf.find(b"\n", pos)
            if 0 <= cr < pos:
                cr = buf.find(b"\r", pos)
            i = lf if cr < 0 else cr if lf < 0 else min(lf, cr)
            if i < 0:
                resume = n
                break
            j = _eol_end(buf, i, final)
            if j < 0 or (j == n and not final):  # the next byte decides what this line end is: wait for it
                resume = i
                break
            if j < n and buf[j] in (LF, CR):
                k = _eol_end(buf, j, final)
                if k < 0:
                    resume = i
                    break
                self.consumed += (self._skip_size if self._skip is not None else self._head_len) + k - start
                event = self._complete(buf, start, i, k)
                if event is not None:
                    events.append(event)
                start = pos = k
            else:
                pos = j
        if start < resume:
            self._hold(buf[start:resume])
        self._tail = buf[resume:]
        return events

    def _complete(self, buf: bytes, start: int, end: int, stop: int) -> SseEvent | None:
        """The block ending at ``end`` (its blank line ends at ``stop``), with the held bytes before it."""
        if self._skip is not None:
            return self._withheld(buf[start:stop])
        piece = buf[start:stop] if start or stop < len(buf) else buf
        if self._head:
            self._head.append(piece)
            raw = b"".join(self._head)
            self._head, self._head_len = [], 0
        else:
            raw = piece
        self._release()
        if self._max_event is not None and len(raw) > self._max_event:  # the same verdict however it was cut
            self._start_skip(raw, EVENT_TOO_BIG)
            return self._withheld(b"")
        return parse_event(raw, raw)  # its blank line adds only empty lines: no copy without it needed

    def _hold(self, piece: bytes) -> None:
        """Bytes of the unfinished block: kept, or (past a bound) only hashed."""
        if self._skip is not None:
            self._skip.update(piece)
            self._skip_size += len(piece)
            return
        size = self._head_len + len(piece)
        if self._max_event is not None and size > self._max_event:
            self._start_skip(b"".join(self._head) + piece, EVENT_TOO_BIG)
        elif self._budget is not None and not self._budget.take(len(piece)):
            self._start_skip(b"".join(self._head) + piece, BUDGET_SPENT)
        else:
            self._head.append(piece)
            self._head_len = size
            self._charged += len(piece) if self._budget is not None else 0

    def _start_skip(self, held: bytes, reason: str) -> None:
        self._skip = hashlib.sha256(held)
        self._skip_size = len(held)
        self._skip_prefix = held[:_FIELDS_PREFIX]
        self._skip_reason = reason
        self._head, self._head_len = [], 0
        self._release()

    def _withheld(self, last: bytes) -> SseEvent:
        self._skip.update(last)
        size = self._skip_size + len(last)
        event, event_id = _leading_fields(self._skip_prefix)
        out = SseEvent(
            data="", event=event, id=event_id, withheld=self._skip_reason, size=size, sha256=self._skip.hexdigest()
        )
        self._skip, self._skip_size, self._skip_prefix = None, 0, b""
        return out

    def _release(self) -> None:
        if self._charged and self._budget is not None:
            self._budget.give(self._charged)
        self._charged = 0


def _eol_end(buf: bytes, i: int, final: bool) -> int:
    """Where the line end at ``i`` ends; -1 for a CR at the end of ``buf`` that may be half a CRLF."""
    if buf[i] == LF:
        return i + 1
    if i + 1 < len(buf):
        return i + 2 if buf[i + 1] == LF else i + 1
    return i + 1 if final else -1


def _leading_fields(prefix: bytes) -> tuple[str, str | None]:
    """The ``event`` and ``id`` fields among the complete lines of a withheld block's first bytes."""
    lines = _LINE.split(prefix)[:-1]  # the last piece may be cut mid-line
    event, event_id = "", None
    for line in lines:
        name, sep, value = line.partition(b":")
        if sep and value.startswith(b" "):
            value = value[1:]
        if name == b"event":
            event = value.decode("utf-8", errors="replace")
        elif name == b"id" and b"\x00" not in value:
            event_id = value.decode("utf-8", errors="replace")
    return event or "message", event_id


def parse_event(block: bytes, raw: bytes = b"") -> SseEvent | None:
    """Parse one event block (its lines; the terminating blank line may be included, it adds only empty lines,
    which are ignored); None for a block with no effect."""
    data: list[str] = []
    event = ""
    event_id: str | None = None
    retry: int | None = None
    named = False
    for name, view in _fields(block):
        if name == b"data":
            data.append(str(view, "utf-8", "replace"))
            continue
        value = bytes(view)
        if name == b"event":
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


def _fields(block: bytes) -> Iterator[tuple[bytes, bytes | memoryview]]:
    """(name, value) of each field line of ``block``, comments and empty lines skipped. Without a CR, lines are
    found with ``bytes.find`` (memchr) and a value is a view into ``block``: a 64 KiB data line is copied once, when
    it is decoded, instead of four times (split, partition, the space cut, decode)."""
    if b"\r" in block:  # bytes.splitlines splits at CRLF, LF and CR only, as _LINE does
        for line in block.splitlines():
            if line and not line.startswith(b":"):
                name, sep, value = line.partition(b":")
                yield name, value[1:] if sep and value.startswith(b" ") else value
        return
    view = memoryview(block)
    pos, n = 0, len(block)
    while pos < n:
        end = block.find(b"\n", pos)
        end = n if end < 0 else end
        if end > pos and block[pos] != 0x3A:  # not empty, not a comment
            colon = block.find(b":", pos, end)
            if colon < 0:
                yield block[pos:end], b""
            else:
                at = colon + 1 + (colon + 1 < end and block[colon + 1] == 0x20)
                yield block[pos:colon], view[at:end]
        pos = end + 1


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
