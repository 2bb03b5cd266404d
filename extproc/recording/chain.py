"""The chain format, written and read in one place: a stream's lines, each parsed once, the hash chain checked.

Every line the recorder writes is ``{"seq": n, "prev": <SHA-256 of the previous line>, ...event}``. Replay, the
manifest checks and the completer all read streams through here, so a line is split, parsed and hashed once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from extproc.recording import jsonio
from extproc.recording.events import Event
from extproc.recording.manifest import GENESIS


def chain_line(seq: int, prev: str, event: dict[str, Any]) -> bytes:
    """One JSON line with its chain fields first; the hash of these exact bytes is the next ``prev``."""
    return jsonio.dumps({"seq": seq, "prev": prev, **event})


def event_line(seq: int, prev: str, event: Event) -> bytes:
    """``chain_line`` of ``event.to_dict()``, byte for byte, with the event serialized once by orjson directly."""
    try:
        body = orjson.dumps(event)  # a dataclass: its fields in declaration order, as to_dict gives them
    except TypeError:  # an integer beyond 64 bits or a non-string key (client-controlled JSON): the exact fallback
        return chain_line(seq, prev, event.to_dict())
    kind = _TYPES.get(event.type)
    if kind is None:
        kind = _TYPES[event.type] = orjson.dumps(event.type)  # a class constant: a handful of types in all
    head = b'{"seq":%d,"prev":"%s","type":%s' % (seq, prev.encode(), kind)
    return head + (b"," + body[1:] if len(body) > 2 else b"}")


_TYPES: dict[str, bytes] = {}  # an event type as JSON (``Event.type``: the classes' names, never client text)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a recording, precise enough to act on."""

    writer: str
    line: int
    message: str
    segment: int | None = None

    def __str__(self) -> str:
        where = f"segment {self.segment}" if self.segment is not None else f"line {self.line}"
        return f"{self.writer}: {where}: {self.message}"


@dataclass(slots=True)
class Line:
    """One line of a stream: where it is, its exact bytes, its event (None unless a JSON object) and its hash."""

    number: int  # 1-based
    raw: bytes
    event: dict[str, Any] | None
    digest: str  # SHA-256 of ``raw``: the next line's ``prev``

    @property
    def seq(self) -> int | None:
        seq = self.event.get("seq") if self.event is not None else None
        return seq if isinstance(seq, int) else None

    @property
    def session(self) -> str | None:
        return self.event.get("session") if self.event is not None and self.seq is not None else None


@dataclass(slots=True)
class Stream:
    """A stream's lines, and whether its last line was terminated (a missing newline is a torn write)."""

    lines: list[Line]
    terminated: bool


def split(data: bytes) -> tuple[list[bytes], bool]:
    """Lines without their newlines, and whether the data ended with one (or was empty)."""
    pieces = data.split(b"\n")
    if pieces[-1] == b"":
        pieces.pop()
        return pieces, True
    return pieces, False


def parse_line(raw: bytes) -> dict[str, Any] | None:
    try:
        ev = jsonio.loads(raw)
    except ValueError:
        return None
    return ev if isinstance(ev, dict) else None  # a JSON array or scalar is as corrupt as garbage


def read(data: bytes) -> Stream:
    """Split and parse a stream once."""
    pieces, terminated = split(data)
    lines = [Line(n, raw, parse_line(raw), hashlib.sha256(raw).hexdigest()) for n, raw in enumerate(pieces, start=1)]
    return Stream(lines, terminated)


def check(writer: str, stream: Stream) -> list[Problem]:
    """The chain: line n has ``seq`` n-1 and ``prev`` = SHA-256 of line n-1 (GENESIS for the first)."""
    problems: list[Problem] = []
    if not stream.terminated:
        problems.append(Problem(writer, len(stream.lines), "last line is not terminated (truncated write)"))
    prev = GENESIS
    for ln in stream.lines:
        ev = ln.event
        if ev is None:
            problems.append(Problem(writer, ln.number, "not valid JSON (edited or corrupted)"))
        else:
            if ev.get("seq") != ln.number - 1:
                expected = ln.number - 1
                why = f"sequence {ev.get('seq')!r}, expected {expected} (line removed or reordered)"
                problems.append(Problem(writer, ln.number, why))
            if ev.get("prev") != prev:
                problems.append(
                    Problem(writer, ln.number, "hash chain broken: previous line was altered, removed or reordered")
                )
        prev = ln.digest
    return problems


def events(stream: Stream) -> list[dict[str, Any]]:
    return [ln.event for ln in stream.lines if ln.event is not None]


def intact(data: bytes, seq: int, prev: str) -> Iterator[tuple[int, dict[str, Any], str]]:
    """Continue a chain at (``seq``, ``prev``): yield (end offset, event, hash) per intact line; stop at the first
    line that is torn (no newline), unparsable or off the chain."""
    offset = 0
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            return
        raw = data[offset:end]
        ev = parse_line(raw)
        if ev is None or ev.get("seq") != seq or ev.get("prev") != prev:
            return
        prev = hashlib.sha256(raw).hexdigest()
        offset = end + 1
        seq += 1
        yield offset, ev, prev
