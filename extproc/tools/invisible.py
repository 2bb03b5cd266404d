"""Invisible characters: which ones (``INVISIBLE``, by rule), and finding or stripping them in raw JSON bytes as a
body streams (``ByteStripper``: their UTF-8 bytes and JSON escapes, surrogate pairs and lone halves included, in any
chunking) without parsing or holding it. The screens over definitions and results are in ``screens.py``."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable
from typing import Any

from ahocorasick_rs import BytesAhoCorasick, MatchKind

# rule name -> character class. Tag characters first: the most common smuggling channel.
_INVISIBLE_CLASSES = {
    "tag-characters": "\U000e0000-\U000e007f",
    "zero-width": "\u200b-\u200d\u2060-\u2064\ufeff\u180e\u00ad\u034f\u115f\u1160\u3164\uffa0",
    "bidi-control": "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c",
}
INVISIBLE = re.compile("[" + "".join(_INVISIBLE_CLASSES.values()) + "]+")
INVISIBLE_RULES = [(re.compile(f"[{cls}]"), rule) for rule, cls in _INVISIBLE_CLASSES.items()]


def has_invisible(text: str) -> bool:
    """Whether ``text`` holds an invisible character. Every one is outside ASCII, and ``str.isascii`` is a flag
    CPython keeps on each string: most texts are answered without the regex, which scans a character at a time
    (~6 µs per tool description, most of what screening a 500-tool list cost)."""
    return not text.isascii() and INVISIBLE.search(text) is not None


@functools.cache
def _invisible_chars() -> tuple[str, ...]:
    """Every invisible character, in code point order."""
    ranges = (range(0x80, 0x10000), range(0xE0000, 0xE0080))
    return tuple(chr(c) for r in ranges for c in r if INVISIBLE.match(chr(c)))


def _alternation(forms: Iterable[tuple[frozenset[int], ...]]) -> bytes:
    """A regex (bytes) matching any of ``forms``, each a sequence of byte sets, written as a trie: where it is
    tried, only the alternatives whose next byte fits are followed (a flat alternation of 200 forms tried them
    all, and ``re`` needed about 1 s to scan a MiB of non-ASCII text with it)."""
    trie: dict[Any, Any] = {}
    for form in forms:
        node = trie
        for atom in form:
            node = node.setdefault(atom, {})
        node[None] = {}
    return _branches(trie, top=True)


def _branches(node: dict[Any, Any], top: bool = False) -> bytes:
    ends = [atom for atom, sub in node.items() if atom is not None and sub == {None: {}}]
    merged = frozenset().union(*ends) if len(ends) > 1 else None  # last bytes merge into one class
    parts = [] if merged is None else [_atom(merged)]
    for atom, sub in node.items():
        if atom is not None and (merged is None or atom not in ends):
            parts.append(_atom(atom) + (b"" if sub == {None: {}} else _branches(sub)))
    if None in node:  # a form ends here and a longer one goes on: the longer is tried first
        parts.append(b"")
    if top or len(parts) == 1:
        return b"|".join(parts)
    return b"(?:" + b"|".join(parts) + b")"


def _atom(values: frozenset[int]) -> bytes:
    escaped = b"".join(re.escape(bytes([v])) for v in sorted(values))
    return escaped if len(values) == 1 else b"[" + escaped + b"]"


def _hex(text: str) -> tuple[frozenset[int], ...]:
    """Hex digits as JSON writes them in an escape: either case."""
    return tuple(frozenset({ord(c.lower()), ord(c.upper())}) for c in text)


@functools.cache
def _strip_pattern() -> re.Pattern[bytes]:
    """An invisible character in any form JSON text can carry it: its UTF-8 bytes, its ``\\uHHHH`` escape, or (tag
    characters, outside the BMP) its escaped surrogate pair. An escape counts only after an even run of
    backslashes (group 1, kept): ``\\\\u200b`` is a backslash, then the text u200b. The run is matched from its
    first backslash (the look-behind). Only tried where ``_candidates`` points: ``re`` scans ~8 ms per MiB."""
    chars = _invisible_chars()
    escapes = [_hex(f"{ord(ch):04x}") for ch in chars if ord(ch) < 0x10000]
    pair = (*_hex("db40"), frozenset(b"\\"), frozenset(b"u"), *_hex("dc"), frozenset(b"01234567"))
    escapes.append((*pair, frozenset(b"0123456789abcdefABCDEF")))  # a tag character: its escaped surrogate pair
    utf8 = [tuple(frozenset([b]) for b in ch.encode()) for ch in chars]
    # A lone high surrogate of the tag plane (not followed by a low one) goes too: were an invisible form between it
    # and a lone low surrogate removed, the two would join into a tag character (\udb40\u200b\udc41).
    lone = rb"[dD][bB]40(?!\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    escape = rb"\\(?<!\\\\)((?:\\\\)*)u(?:" + _alternation(escapes) + b"|" + lone + b")"
    return re.compile(escape + b"|" + _alternation(utf8))


@functools.cache
def _starts() -> tuple[BytesAhoCorasick, BytesAhoCorasick]:
    """Where an invisible character's form may start: (its UTF-8 bytes, first three; its escape, hex in either
    case, only as far as needed to keep the list short). Each list is small enough for the SIMD searcher
    (leftmost-first, at most 64 patterns): ~0.1 ms per MiB where ``re`` needs ~8."""
    utf8 = sorted({ch.encode()[:3] for ch in _invisible_chars()})
    prefixes = ["00ad", "034f", "061c", "115f", "1160", "180e", "200", "202", "206", "3164", "fef", "ffa", "db4"]
    escapes = sorted({b"\\u" + "".join(v).encode() for p in prefixes for v in itertools.product(*map(_cases, p))})
    kind = MatchKind.LeftmostFirst
    return BytesAhoCorasick(utf8, matchkind=kind), BytesAhoCorasick(escapes, matchkind=kind)


def _cases(c: str) -> str:
    return c if c.isdigit() else c.lower() + c.upper()


def _candidates(data: bytes) -> list[int]:
    """Offsets where an invisible character's form may start in ``data`` (an escape: its last backslash), in
    order; none is missed. ASCII without a backslash (most text) is answered by two memchr-fast checks."""
    utf8, escapes = _starts()
    found = [] if data.isascii() else [at for _, at, _ in utf8.find_matches_as_indexes(data)]
    if b"\\" in data:
        more = [at for _, at, _ in escapes.find_matches_as_indexes(data)]
        found = sorted(found + more) if found else more
    return found


def _run_start(data: bytes, i: int) -> int:
    """Where the pattern is tried for a candidate at ``i``: an escape from the first backslash of its run (which
    ones are escaped backslashes depends on the run's length), a UTF-8 form where it starts."""
    while i > 0 and data[i] == 0x5C and data[i - 1] == 0x5C:
        i -= 1
    return i


class ByteStripper:
    """Removes invisible characters from JSON text as it streams, chunk by chunk, without parsing it: every form
    ``_strip_pattern`` knows. Removing them never breaks the JSON (they only ever occur inside strings). What may
    be the start of a character or an escape that the next chunk completes is held back until it comes (at most
    a few bytes, or a run of backslashes)."""

    def __init__(self) -> None:
        self._tail = b""
        self.stripped = 0  # bytes removed so far

    def feed(self, chunk: bytes, final: bool = False) -> bytes | None:
        """The bytes to send for ``chunk`` (held bytes included), or None when that is ``chunk`` unchanged. The
        chunk is searched in C for where a form may start (``_candidates``); the pattern runs only there."""
        data = self._tail + chunk if self._tail else chunk
        hold = len(data) if final else len(data) - _unfinished(data)
        out: list[bytes] = []
        pos = 0
        for i in _candidates(data):
            start = _run_start(data, i)
            if start < pos:
                continue
            if start >= hold:
                break
            m = _strip_pattern().match(data, start)
            if m is not None:
                out += (data[pos:start], m.group(1) or b"")  # a match begun before the held part is whole: taken
                pos = m.end()
        end = max(hold, pos)
        self._tail = data[end:]
        if not out:
            return None if end == len(data) and data is chunk else data[:end]
        out.append(data[pos:end])
        released = b"".join(out)
        self.stripped += end - len(released)
        return released


def strip_invisible_bytes(data: bytes) -> bytes:
    """A whole JSON text without invisible characters (``ByteStripper`` in one go)."""
    out = ByteStripper().feed(data, final=True)
    return data if out is None else out


def _unfinished(data: bytes) -> int:
    """How many bytes at the end of ``data`` may be the start of what the next chunk completes: a UTF-8 character
    missing bytes, or an escape (from the first backslash of the run that reaches into the last 12 bytes: an
    escaped surrogate pair is 12 bytes long, and a backslash pair must not be split from its first half)."""
    n = 0
    back = data.find(b"\\", max(0, len(data) - 12))
    if back >= 0:
        while back > 0 and data[back - 1] == 0x5C:
            back -= 1
        n = len(data) - back
    for i in range(1, min(4, len(data)) + 1):
        b = data[-i]
        if b < 0x80:
            break
        if b >= 0xC0:
            if (2 if b < 0xE0 else 3 if b < 0xF0 else 4) > i:
                n = max(n, i)
            break
    return n


def may_hold_invisible(raw: bytes) -> bool:
    """Could this JSON text hold an invisible character? False is certain; True is checked by parsing it. Where a
    form may start (``_candidates``), the pattern is tried."""
    rx = _strip_pattern()
    return any(rx.match(raw, _run_start(raw, i)) for i in _candidates(raw))
