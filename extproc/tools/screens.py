"""Screens over listed definitions: text a model reads but a person reviewing the tool does not see or expect.

Three built-in screens, each finding named by rule, JSON pointer and span (code-point offsets in that string):

``invisible``     characters that are never legitimate text for a model: Unicode tag characters (U+E0000-E007F,
                  which smuggle ASCII invisibly), zero-width and invisible format characters, and bidirectional
                  controls (overrides, embeddings, isolates, marks) that reorder what a reviewer sees. Strippable.
``instructions``  instruction markers addressed to the model (``INSTRUCTION_PATTERNS``). A small, documented,
                  tested set that catches the common tool-poisoning forms; it is NOT complete and cannot be:
                  it raises the cost of a lazy attack, no more. Screen results with an external guardrail too.
``cross_server``  a description that names a tool of another server (shadowing: "when using send_email, also
                  ..."). Only distinctive names are matched (with '_', '-', '.', '/', a digit or an inner capital);
                  a plain word such as ``add`` would flag ordinary English.

Pure functions on plain JSON data; nothing here knows where the definition came from.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import ahocorasick_rs
from ahocorasick_rs import BytesAhoCorasick, MatchKind

SCREENS = ("invisible", "instructions", "cross_server")

# rule name -> character class. Tag characters first: the most common smuggling channel.
_INVISIBLE_CLASSES = {
    "tag-characters": "\U000e0000-\U000e007f",
    "zero-width": "\u200b-\u200d\u2060-\u2064\ufeff\u180e\u00ad\u034f\u115f\u1160\u3164\uffa0",
    "bidi-control": "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c",
}
_INVISIBLE = re.compile("[" + "".join(_INVISIBLE_CLASSES.values()) + "]+")
_INVISIBLE_RULE = [(re.compile(f"[{cls}]"), rule) for rule, cls in _INVISIBLE_CLASSES.items()]


def has_invisible(text: str) -> bool:
    """Whether ``text`` holds an invisible character. Every one is outside ASCII, and ``str.isascii`` is a flag
    CPython keeps on each string: most texts are answered without the regex, which scans a character at a time
    (~6 µs per tool description, most of what screening a 500-tool list cost)."""
    return not text.isascii() and _INVISIBLE.search(text) is not None


@functools.cache
def _invisible_chars() -> tuple[str, ...]:
    """Every invisible character, in code point order."""
    ranges = (range(0x80, 0x10000), range(0xE0000, 0xE0080))
    return tuple(chr(c) for r in ranges for c in r if _INVISIBLE.match(chr(c)))


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
    """An invisible character in any form JSON text can carry it: its UTF-8 bytes, its ``\\uXXXX`` escape, or (tag
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


# Instruction markers addressed to the model. Not complete (see the module docstring); each is tested.
INSTRUCTION_PATTERNS: dict[str, str] = {
    # <IMPORTANT>, <system>, </instructions>, [SYSTEM]: pseudo-markup that claims authority over the model
    "authority-tag": r"[<\[]\s*/?\s*(?:important|system|instructions?|admin|critical|secret)\s*[>\]]",
    # "ignore (all) previous instructions", "disregard prior rules"
    "override-previous": r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+)?"
    r"(?:previous|prior|above|earlier|other|preceding)\s+(?:instructions?|prompts?|messages?|rules?|directions?)",
    # "do not tell the user", "don't mention this to the user", "without informing the user"
    "conceal-from-user": r"\b(?:do\s+not|don'?t|never|without)\s+(?:tell(?:ing)?|inform(?:ing)?|mention(?:ing)?|"
    r"reveal(?:ing)?|notify(?:ing)?|show(?:ing)?)\s+(?:this\s+|it\s+|anything\s+)?(?:to\s+)?the\s+user",
    # "you are now ...", "new instructions:", "from now on you"
    "role-override": r"\b(?:you\s+are\s+now\b|new\s+instructions?\s*:|from\s+now\s+on,?\s+you\b)",
    # secrets a tool has no business asking the model to read and pass along
    "secret-files": r"(?:~/\.ssh|\bid_rsa\b|\bid_ed25519\b|~/\.aws/credentials|\bmcp\.json\b|~/\.cursor/)",
}
_INSTRUCTIONS = re.compile(
    "|".join(f"(?P<{name.replace('-', '_')}>{p})" for name, p in INSTRUCTION_PATTERNS.items()), re.IGNORECASE
)
# Every instruction pattern starts with one of these (lower case). One Aho-Corasick pass finds where they occur and
# the patterns are tried there only, anchored: a 500-tool list costs a few ms instead of ~40 ms for the patterns
# tried at every position. A test holds the fast path equal to a full search.
STARTS = ("<", "[", "ignore", "disregard", "forget", "override", "do", "never", "without", "you", "new", "from",
          "~/", "id_", "mcp.")  # fmt: skip
_STARTS = ahocorasick_rs.AhoCorasick(STARTS)
# Characters that IGNORECASE matches to an ASCII letter but str.lower() leaves outside ASCII (re's case-folding
# equivalences: U+0131 dotless i ~ i, U+017F long s ~ s). Checked only in text that is not ASCII.
_FOLDS = re.compile("[\u0131\u017f]")


def instructions(text: str) -> list[re.Match[str]]:
    """Non-overlapping instruction-marker matches in ``text``, leftmost first (as ``finditer`` would give)."""
    low = text.lower()
    if len(low) != len(text) or (not text.isascii() and _FOLDS.search(text) is not None):
        # a character whose lower case is longer (offsets would drift), or one the patterns match case-blind
        # without lower() giving ASCII (dotless i, long s): search it all
        return list(_INSTRUCTIONS.finditer(text))
    out: list[re.Match[str]] = []
    end = 0
    for _, start, _ in _STARTS.find_matches_as_indexes(low):
        if start < end:
            continue
        m = _INSTRUCTIONS.match(text, start)
        if m is not None and m.end() > m.start():
            out.append(m)
            end = m.end()
    return out


# --- the same markers in results: a byte prefilter ----------------------------------------------------------------
# A call's result streams as bytes (a JSON document, SSE events); parsing each to screen it would cost more than the
# rest of the path. Every instruction pattern needs one of these words (lower case: ``authority-tag`` one of its
# tag words, ``override-previous`` its verb, ``conceal-from-user`` "user", ``role-override`` "now" or
# "instruction", ``secret-files`` its file's name); a test holds each pattern to it. One DFA Aho-Corasick pass over
# the lower-cased bytes finds them; only a piece where one occurs is parsed and screened exactly.
MARKER_ANCHORS = ("important", "system", "instruction", "admin", "critical", "secret", "ignore", "disregard",
                  "forget", "override", "user", "now", "ssh", "id_rsa", "id_ed25519", "credentials", "mcp.json",
                  "cursor")  # fmt: skip
_DFA = ahocorasick_rs.Implementation.DFA
# What the byte pass cannot see, so the piece is parsed: a JSON escape of an ASCII character (``\u0069gnore``
# reads "ignore") or of a character matched case-blind to an ASCII letter, and those characters' UTF-8 forms
# (dotless i, capital I with dot, long s, Kelvin sign).
_ESCAPED_LETTERS = re.compile(rb"\\u(?:00[0-7]|013[01]|017f|212a)", re.IGNORECASE)
_FOLD_BYTES = re.compile(rb"\xc4[\xb0\xb1]|\xc5\xbf|\xe2\x84\xaa")


@functools.cache
def _marker_anchors() -> ahocorasick_rs.BytesAhoCorasick:
    return ahocorasick_rs.BytesAhoCorasick([w.encode() for w in MARKER_ANCHORS], implementation=_DFA)


def may_hold_markers(raw: bytes, cross: CrossNames | None = None) -> bool:
    """Could this JSON text hold an instruction marker (or, with ``cross``, another server's tool name)? False is
    certain; True is checked by parsing it and screening its strings (``scan``)."""
    if b"\\u" in raw and _ESCAPED_LETTERS.search(raw) is not None:
        return True
    if not raw.isascii() and (_FOLD_BYTES.search(raw) is not None or may_hold_invisible(raw)):
        return True  # (invisible: tag characters may smuggle a marker, decoded by the screen)
    anchors = cross.anchors() if cross is not None else _marker_anchors()
    return bool(anchors.find_matches_as_indexes(raw.lower()))


_DISTINCTIVE = re.compile(r"[_\-./0-9]|[a-z][A-Z]")
_TEXT_KEYS = frozenset({"description", "title"})


@dataclass(frozen=True, slots=True)
class Finding:
    """One screen hit: which screen and rule, where (JSON pointer into the definition), which span, what."""

    screen: str
    rule: str
    path: str
    start: int
    end: int
    excerpt: str  # the matched text (invisible characters as U+XXXX), at most 80 characters

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


class CrossNames:
    """Other servers' distinctive tool names, found as whole words (not inside a longer name) in one
    Aho-Corasick pass, leftmost-longest."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self._ac = ahocorasick_rs.AhoCorasick(names, matchkind=ahocorasick_rs.MatchKind.LeftmostLongest)
        self._anchors: ahocorasick_rs.BytesAhoCorasick | None = None

    def anchors(self) -> ahocorasick_rs.BytesAhoCorasick:
        """The result prefilter's words with these names added (``may_hold_markers``), built on first use."""
        if self._anchors is None:
            words = {*MARKER_ANCHORS, *(n.lower() for n in self.names)}
            self._anchors = ahocorasick_rs.BytesAhoCorasick([w.encode() for w in sorted(words)], implementation=_DFA)
        return self._anchors

    def finditer(self, text: str) -> list[tuple[int, int]]:
        out = []
        for _, start, end in self._ac.find_matches_as_indexes(text):
            before = text[start - 1] if start > 0 else " "
            after = text[end] if end < len(text) else " "
            if not (before.isalnum() or before in "_-") and not (after.isalnum() or after in "_-"):
                out.append((start, end))
        return out


def cross_server_pattern(names: Iterable[str]) -> CrossNames | None:
    """A matcher for the distinctive tool names of other servers (None when there is none)."""
    picked = sorted({n for n in names if isinstance(n, str) and len(n) >= 3 and _DISTINCTIVE.search(n)})
    return CrossNames(picked) if picked else None


def scan(
    definition: Any, cross: CrossNames | None = None, texts: list[str] | None = None, everywhere: bool = False
) -> list[Finding]:
    """Every finding of every screen in one definition (strings and object keys, recursively). ``texts``: its
    strings as ``strings`` gives them, when a walk already collected them (fingerprint.fingerprint does).
    Other servers' tool names are looked for in descriptions and titles, or (``everywhere``: a result) in every
    string."""
    if not texts:  # not collected (or nothing to screen: collecting again costs nothing)
        texts = strings(definition)
    joined = "\x00".join(texts)  # one pass over all of it first: most definitions have nothing to find
    if not (has_invisible(joined) or instructions(joined) or (cross is not None and cross.finditer(joined))):
        return []
    found: list[Finding] = []
    _walk(definition, "", cross, found, None, everywhere)
    return found


def strings(definition: Any) -> list[str]:
    """Every string of ``definition``, object keys too, in document order."""
    texts: list[str] = []
    _collect(definition, texts)
    return texts


def _collect(node: Any, texts: list[str]) -> None:
    if isinstance(node, str):
        texts.append(node)
    elif isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str):
                texts.append(k)
            _collect(v, texts)
    elif isinstance(node, list):
        for v in node:
            _collect(v, texts)


def strip_invisible(definition: Any) -> Any:
    """A copy of ``definition`` without invisible and bidi-control characters (the same object if it has none)."""
    if isinstance(definition, str):
        return _INVISIBLE.sub("", definition) if has_invisible(definition) else definition
    if isinstance(definition, dict):
        out = {strip_invisible(k): strip_invisible(v) for k, v in definition.items()}
        same = len(out) == len(definition) and all(k in definition and definition[k] is v for k, v in out.items())
        return definition if same else out
    if isinstance(definition, list):
        items = [strip_invisible(v) for v in definition]
        return definition if all(a is b for a, b in zip(items, definition, strict=True)) else items
    return definition


def _walk(
    node: Any, path: str, cross: CrossNames | None, found: list[Finding], key: str | None, everywhere: bool = False
) -> None:
    if isinstance(node, str):
        _text(node, path, cross if everywhere or key in _TEXT_KEYS else None, found)
    elif isinstance(node, dict):
        for k, v in node.items():
            sub = f"{path}/{_escape(str(k))}"
            if isinstance(k, str) and has_invisible(k):
                _invisible(k, sub + "#key", found)
            _walk(v, sub, cross, found, k, everywhere)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _walk(v, f"{path}/{i}", cross, found, key, everywhere)


def _text(text: str, path: str, cross: CrossNames | None, found: list[Finding]) -> None:
    # Instruction and cross-server spans are offsets in the text with invisible characters removed (what a
    # reviewer sees); ASCII smuggled in tag characters is decoded and screened too (path suffix "#tags").
    text_seen = text
    if has_invisible(text):
        _invisible(text, path, found)
        text_seen = _INVISIBLE.sub("", text)
        smuggled = "".join(chr(ord(c) - 0xE0000) for c in text if 0xE0020 <= ord(c) <= 0xE007E)
        if smuggled:
            _text(smuggled, path + "#tags", cross, found)
    for m in instructions(text_seen):
        rule = (m.lastgroup or "").replace("_", "-")
        found.append(Finding("instructions", rule, path, m.start(), m.end(), m.group(0)[:80]))
    if cross is not None:
        for start, end in cross.finditer(text_seen):
            found.append(Finding("cross_server", "other-server-tool", path, start, end, text_seen[start:end][:80]))


def _invisible(text: str, path: str, found: list[Finding]) -> None:
    for m in _INVISIBLE.finditer(text):
        run = m.group(0)
        rule = next((r for rx, r in _INVISIBLE_RULE if rx.match(run)), "zero-width")
        shown = " ".join(f"U+{ord(c):04X}" for c in run[:12])
        found.append(Finding("invisible", rule, path, m.start(), m.end(), shown[:80]))


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")
