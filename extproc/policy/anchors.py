"""Where the built-in redaction patterns can match in a long text: one Aho-Corasick pass, not a regex scan each.

A regex scan tries every position of the text (about 0.5 ms per pattern per 64 KiB); most long texts hold no
secret at all. Each built-in pattern's match begins with one of a few words (its anchors). One pass of a
multi-string search (``ahocorasick-rs``, leftmost-first so that its prefilter works) over a folded copy of the text
(ASCII letters lower-cased, every non-word character a space, one space in front) finds every anchor, and each
pattern is then tried only where its anchors put a match start (``re.match``). Leftmost-first search reports no
anchor inside another it reported; those few places are checked one by one (``_nested``).

A text outside ASCII is searched in its UTF-8 bytes (each non-ASCII byte folds to a space, as a non-word
character: the anchors that want a word start find more places, never fewer, and the regex's own ``\b`` then
decides), and the byte offsets found are turned into code points (``_code_points``). Four characters outside ASCII
match an ASCII letter under ``(?i)`` (U+0130 and U+0131 match "i", U+017F "s", U+212A "k"): a text holding one of
them could match where no anchor is, so it is not searched here (``folds_to_ascii``: the caller scans it whole).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ahocorasick_rs import BytesAhoCorasick, MatchKind

# Per built-in rule: (anchor, offset). A leading space in an anchor means "at the start of a word", as the
# pattern's leading \b wants. An anchor found at folded index i puts the match start at text index i + offset
# (the folded text is one longer, in front).
ANCHORS: dict[str, tuple[tuple[str, int], ...]] = {
    "builtin-private-key": ((" begin", -5),),  # "-----BEGIN": five dashes (folded: spaces), the last one here
    "builtin-bearer-token": ((" bearer", 0),),
    "builtin-jwt": ((" eyj", 0),),
    "builtin-aws-access-key": ((" akia", 0), (" asia", 0), (" abia", 0), (" acca", 0)),
    "builtin-github-token": tuple((f" {p}", 0) for p in ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    "builtin-aws-secret-key": (("aws", -1),),
    # Whole words: the pattern wants \b after the word, which in the folded text is a space. A word that only
    # begins so ("tokenizer", "secretary") is no place to try the pattern: in ordinary text most anchor hits were.
    "builtin-password-assignment": tuple(
        (f" {w} ", 0) for w in ("password", "passwd", "pwd", "secret", "api_key", "api key", "apikey", "token")
    ),
}
FOLD = bytes(c + 32 if 65 <= c <= 90 else c if (c < 128 and chr(c).isalnum()) or c == 95 else 32 for c in range(256))
ANCHORED_FROM = 256  # shorter texts: one regex scan is as cheap
# The code points that ``re`` with IGNORECASE matches to an ASCII letter or digit (all of Unicode scanned once).
ASCII_FOLDING = ("\u0130", "\u0131", "\u017f", "\u212a")
_CONTINUATION = bytes(range(0x80, 0xC0))  # UTF-8 bytes that do not begin a character


def folds_to_ascii(text: str) -> bool:
    """True if ``text`` holds a character a case-insensitive pattern matches to an ASCII letter."""
    return not text.isascii() and any(c in text for c in ASCII_FOLDING)


class AnchorScan:
    """The anchors of some patterns (by pattern index; None: a pattern without anchors), compiled for ``starts``."""

    def __init__(self, by_pattern: Sequence[tuple[tuple[str, int], ...] | None]) -> None:
        written = sorted({a for anchors in by_pattern if anchors for a, _ in anchors})
        spaced = {a.lstrip(" ") for a in written if a.startswith(" ")}
        if spaced & {a for a in written if not a.startswith(" ")}:
            raise ValueError("an anchor is written both with and without a leading space")
        # Searched without the leading space (a space is everywhere: it would defeat the search's prefilter);
        # "w" of " w" is found one further on, so its offset is one less.
        offsets = {a.lstrip(" "): o - (len(a) - len(a.lstrip(" "))) for ps in by_pattern if ps for a, o in ps}
        names = sorted(offsets)
        self.patterns = len(by_pattern)
        self.anchors = tuple(a.encode() for a in names)
        self.offsets = tuple(offsets[a] for a in names)
        self.words = tuple(a in spaced for a in names)
        self.starts_of = tuple(
            tuple(i for i, ps in enumerate(by_pattern) if ps and a in {w.lstrip(" ") for w, _ in ps}) for a in names
        )
        self.single = tuple(s[0] if len(s) == 1 else -1 for s in self.starts_of)
        self.uniform = tuple(not ps or len({offsets[a.lstrip(" ")] for a, _ in ps}) <= 1 for ps in by_pattern)
        self.overlaps = tuple(_overlaps(a, names) for a in names)
        self.scanner = BytesAhoCorasick(list(self.anchors), matchkind=MatchKind.LeftmostFirst)

    def starts(self, text: str) -> list[list[int]]:
        """For each pattern, where its anchors put a match start in ``text`` (code points), ascending. ``text``
        holds none of ``ASCII_FOLDING``."""
        raw = text.encode()
        found = self._byte_starts(raw)
        return found if len(raw) == len(text) else [_code_points(raw, s) for s in found]

    def _byte_starts(self, raw: bytes) -> list[list[int]]:
        folded = b" " + raw.translate(FOLD)
        out: list[list[int]] = [[] for _ in range(self.patterns)]
        add = [o.append for o in out]
        single, overlaps, offsets, words = self.single, self.overlaps, self.offsets, self.words
        nested = False
        for anchor, at, _ in self.scanner.find_matches_as_indexes(folded):  # ascending; runs per match: kept lean
            if overlaps[anchor]:
                nested |= self._nested(folded, anchor, at, out)
            if words[anchor] and folded[at - 1] != 32:
                continue
            if single[anchor] >= 0:
                add[single[anchor]](at + offsets[anchor])
            else:
                for index in self.starts_of[anchor]:
                    add[index](at + offsets[anchor])
        return [
            sorted({i for i in s if i >= 0}) if nested or not self.uniform[p] or (s and s[0] < 0) else s
            for p, s in enumerate(out)
        ]

    def _nested(self, folded: bytes, anchor: int, at: int, out: list[list[int]]) -> bool:
        """Anchors occurring inside the one found at ``at`` (the search reports none of them): added to ``out``."""
        found = False
        for shift, other in self.overlaps[anchor]:
            i = at + shift
            if folded.startswith(self.anchors[other], i) and (not self.words[other] or folded[i - 1] == 32):
                found = True
                for index in self.starts_of[other]:
                    out[index].append(i + self.offsets[other])
        return found


def _code_points(raw: bytes, offsets: list[int]) -> list[int]:
    """Byte offsets into the UTF-8 ``raw`` (ascending) as code point offsets: each less the continuation bytes
    before it, counted once over the text. An offset inside a character lands on the next one; no match starts
    there (every match start is found at a character's first byte)."""
    out: list[int] = []
    last = skipped = 0
    for at in offsets:
        if at > last:
            piece = raw[last:at]
            skipped += len(piece) - len(piece.translate(None, _CONTINUATION))
            last = at
        out.append(at - skipped)
    return out


def _overlaps(a: str, anchors: list[str]) -> tuple[tuple[int, int], ...]:
    """Where another anchor (by index) can start inside an occurrence of ``a``: at an offset where it continues a
    suffix of ``a`` or lies within ``a``, or at offset 0 when one is a prefix of the other."""
    out = []
    for offset in range(len(a)):
        for j, b in enumerate(anchors):
            if b == a and offset == 0:
                continue
            if a[offset:].startswith(b) or b.startswith(a[offset:]):
                out.append((offset, j))
    return tuple(out)


def subn_at(
    rx: re.Pattern[str], replace: Callable[[re.Match[str]], str], text: str, starts: list[int]
) -> tuple[str, int]:
    """``rx.subn(replace, text)`` for a pattern whose every match starts at one of ``starts`` (ascending): the same
    leftmost, non-overlapping matches, tried only at those places."""
    out: list[str] = []
    last = n = 0
    for i in starts:
        if i < last:
            continue
        m = rx.match(text, i)  # \b and look-behinds still see the text before i
        if m is None or m.end() == m.start():
            continue
        out += (text[last:i], replace(m))
        last, n = m.end(), n + 1
    if not n:
        return text, 0
    out.append(text[last:])
    return "".join(out), n
