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
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import ahocorasick_rs

from extproc.tools.invisible import INVISIBLE, INVISIBLE_RULES, has_invisible, may_hold_invisible

SCREENS = ("invisible", "instructions", "cross_server")

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
_SURROGATES = re.compile("[\ud800-\udfff]")


def _matchable(text: str) -> str:
    """``text`` as the Aho-Corasick matchers take it (valid UTF-8): a lone surrogate, which JSON may carry (a
    ``\\ud800`` escape), becomes U+FFFD one for one, so offsets hold. Before, one crashed the screen."""
    return text if text.isascii() else _SURROGATES.sub("\ufffd", text)


def instructions(text: str) -> list[re.Match[str]]:
    """Non-overlapping instruction-marker matches in ``text``, leftmost first (as ``finditer`` would give)."""
    low = text.lower()
    if len(low) != len(text) or (not text.isascii() and _FOLDS.search(text) is not None):
        # a character whose lower case is longer (offsets would drift), or one the patterns match case-blind
        # without lower() giving ASCII (dotless i, long s): search it all
        return list(_INSTRUCTIONS.finditer(text))
    out: list[re.Match[str]] = []
    end = 0
    for _, start, _ in _STARTS.find_matches_as_indexes(_matchable(low)):
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
    excerpt: str  # the matched text (invisible characters as U+HHHH), at most 80 characters

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
        for _, start, end in self._ac.find_matches_as_indexes(_matchable(text)):
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
    if isinstance(definition, str):  # a lone high half of the tag characters goes too, as the byte stripper's: with
        # what lay after it gone, it and a low half would serialize as one pair, a tag ("\udb40\u200b\udc41": U+E0041)
        return INVISIBLE.sub("", definition).replace("\udb40", "") if has_invisible(definition) else definition
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
        text_seen = INVISIBLE.sub("", text)
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
    for m in INVISIBLE.finditer(text):
        run = m.group(0)
        rule = next((r for rx, r in INVISIBLE_RULES if rx.match(run)), "zero-width")
        shown = " ".join(f"U+{ord(c):04X}" for c in run[:12])
        found.append(Finding("invisible", rule, path, m.start(), m.end(), shown[:80]))


def _escape(segment: str) -> str:
    return segment.replace("~", "~0").replace("/", "~1")
