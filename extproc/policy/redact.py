"""Redaction of recorded payloads: JSON pointer paths, object keys and regex patterns, with built-in defaults.

Applied by the recorder before anything is stored. One walk over the payload builds a redacted copy (the input
is never mutated) and reports, for each redaction, the rule and the JSON pointer of what it replaced — never
the replaced text. Pointers are relative to one JSON-RPC message (``/params/arguments/token``,
``/result/content/*/text``); for a batch each element is one message and reported pointers start with its index.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ahocorasick_rs import BytesAhoCorasick, MatchKind

from extproc.policy.model import Redaction as RedactionRule
from extproc.secrets import SECRET_NAME_RULE, is_secret_name, marker

# Built-in redactions, on unless a recording entry for the server says ``defaults: false``.
# Patterns with a (?P<value>...) group replace only that group, keeping e.g. "password=" readable.
BUILTIN_PATTERNS: tuple[tuple[str, str], ...] = (
    ("builtin-private-key", r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)"),
    ("builtin-bearer-token", r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]+=*"),
    ("builtin-jwt", r"\beyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"),
    ("builtin-aws-access-key", r"\b(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}\b"),
    ("builtin-github-token", r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b"),
    ("builtin-aws-secret-key", r"(?i)aws_?secret_?access_?key[\"'\s:=]+(?P<value>[A-Za-z0-9/+=]{40})"),
    (
        "builtin-password-assignment",
        r"(?i)\b(?:password|passwd|pwd|secret|api[_-]?key|token)\b[\"']?\s*[:=]\s*[\"']?(?P<value>[^\s\"',;&}]+)",
    ),
)
# Text each built-in pattern cannot match without (lower case): a substring test skips the regex for the many
# strings that cannot hold such a secret (header values, ordinary text), which is most of the cost otherwise.
_HINTS: dict[str, tuple[str, ...]] = {
    "builtin-private-key": ("private key",),
    "builtin-bearer-token": ("bearer",),
    "builtin-jwt": ("eyj",),
    "builtin-aws-access-key": ("akia", "asia", "abia", "acca"),
    "builtin-github-token": ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
    "builtin-aws-secret-key": ("aws",),
    "builtin-password-assignment": ("password", "passwd", "pwd", "secret", "api", "token"),
}
# Where a match of each built-in pattern can start. In a long ASCII text one Aho-Corasick pass over its folded form
# (letters lower-cased, every non-word character a space, one space in front: so " token" is "token" at the start
# of a word, as the patterns' leading \b wants) finds every anchor, and each pattern is tried only where its
# anchors put a match start (``re.match``), never position by position over the whole text. An anchor found at
# folded index i puts the match start at text index i + offset (the folded text is one longer, in front).
_ANCHORS: dict[str, tuple[tuple[str, int], ...]] = {
    "builtin-private-key": ((" begin", -5),),  # "-----BEGIN": five dashes (folded: spaces), the last one here
    "builtin-bearer-token": ((" bearer", 0),),
    "builtin-jwt": ((" eyj", 0),),
    "builtin-aws-access-key": ((" akia", 0), (" asia", 0), (" abia", 0), (" acca", 0)),
    "builtin-github-token": tuple((f" {p}", 0) for p in ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_")),
    "builtin-aws-secret-key": (("aws", -1),),
    "builtin-password-assignment": tuple((f" {w}", 0) for w in ("password", "passwd", "pwd", "secret", "api", "token")),
}
_FOLD = bytes(c + 32 if 65 <= c <= 90 else c if (c < 128 and chr(c).isalnum()) or c == 95 else 32 for c in range(256))
_ANCHORED_FROM = 256  # shorter texts: one regex scan is as cheap
# A key whose name says "credential" (password, api_key, clientSecret, x-github-pat ...): the one classifier that
# also decides which headers and query parameters are never recorded.
BUILTIN_KEYS: tuple[tuple[str, Callable[[str], bool]], ...] = ((SECRET_NAME_RULE, is_secret_name),)


@dataclass(frozen=True, slots=True)
class Redaction:
    """One replacement: which rule replaced what (a JSON pointer into the payload), never the secret itself."""

    rule: str
    pointer: str
    kind: Literal["path", "key", "pattern"]
    count: int = 1  # pattern redactions: matches replaced in that string


@dataclass(slots=True)
class _Node:
    """A JSON pointer trie: ``rule`` ends a pointer here; ``wild`` follows a '*' segment."""

    children: dict[str, _Node] = field(default_factory=dict)
    wild: _Node | None = None
    rule: str | None = None


_Pattern = tuple[
    str,
    re.Pattern[str],
    Callable[[re.Match[str]], str],
    int,
    tuple[str, ...] | None,
    tuple[tuple[str, int], ...] | None,
]


@dataclass(frozen=True, slots=True, eq=False)
class Redactor:
    """The compiled redactions of one server."""

    paths: _Node | None
    keys: tuple[tuple[str, Callable[[str], object]], ...]  # (rule, does this key name match)
    # (name, regex, replacement, shortest match, hints, anchors): see _HINTS and _ANCHORS
    patterns: tuple[_Pattern, ...]
    rules: tuple[str, ...]  # every rule name, for summaries
    # When every pattern has hints: one search for any hint decides whether a text needs the patterns at all.
    any_hint: tuple[str, ...] | None = None
    # Every anchor of the patterns that have them (leftmost-first search, which skips occurrences inside one it
    # reports); for each anchor the patterns it starts (by index), and the (offset, anchor) pairs that may occur
    # inside it (a suffix of it is a prefix of the other, or the other lies within it), checked one by one.
    scanner: BytesAhoCorasick | None = None
    anchors: tuple[bytes, ...] = ()
    anchor_offsets: tuple[int, ...] = ()
    words: tuple[bool, ...] = ()  # anchors written with a leading space: found only where a word starts
    anchor_single: tuple[int, ...] = ()  # the one pattern an anchor starts, -1 when several
    uniform: tuple[bool, ...] = ()  # per pattern: all its anchors put the start at one offset (starts ascend)
    anchor_patterns: tuple[tuple[int, ...], ...] = ()
    anchor_overlaps: tuple[tuple[tuple[int, int], ...], ...] = ()
    # Object keys repeat endlessly ("jsonrpc", "params", "text"): remember each key's rule, bounded because
    # keys come from clients and servers.
    key_memo: dict[str, str | None] = field(default_factory=dict)
    text_memo: dict[str, tuple[str, tuple[tuple[str, str, int], ...]]] = field(default_factory=dict)

    def apply(self, payload: Any) -> tuple[Any, list[Redaction]]:
        """Return a redacted copy of ``payload`` and what was redacted."""
        found: list[Redaction] = []
        roots = (self.paths,) if self.paths is not None else ()
        if isinstance(payload, list):  # a JSON-RPC batch: pointers apply to each message
            out = [self._walk(m, roots, [str(i)], found) for i, m in enumerate(payload)]
            return out, found
        return self._walk(payload, roots, [], found), found

    def _walk(self, value: Any, nodes: tuple[_Node, ...], path: list[str], found: list[Redaction]) -> Any:
        for n in nodes:
            if n.rule is not None:
                found.append(Redaction(n.rule, _pointer(path), "path"))
                return marker(n.rule)
        if isinstance(value, str):
            return self._text(value, path, found)
        if isinstance(value, dict):
            out: dict[Any, Any] = {}
            for k, v in value.items():
                path.append(str(k))
                key_rule = self._key_rule(str(k))
                if key_rule is not None and not _is_empty(v):
                    found.append(Redaction(key_rule, _pointer(path), "key"))
                    out[k] = marker(key_rule)
                else:
                    out[k] = self._walk(v, _step(nodes, str(k)), path, found)
                path.pop()
            return out
        if isinstance(value, list):
            items = []
            for i, v in enumerate(value):
                path.append(str(i))
                items.append(self._walk(v, _step(nodes, str(i)), path, found))
                path.pop()
            return items
        return value

    def key_rule(self, key: str) -> str | None:
        """The rule redacting the value of a key (a JSON key, header or query parameter name), if any."""
        return self._key_rule(key)

    def text(self, text: str, pointer: str) -> tuple[str, list[Redaction]]:
        """``text`` with the value patterns applied (a header value, a path); what was redacted, at ``pointer``."""
        memo = self.text_memo.get(text) if len(text) <= _TEXT_MEMO_LEN else None
        if memo is None:
            found: list[Redaction] = []
            memo = self._text(text, [], found), tuple((r.rule, r.kind, r.count) for r in found)
            if len(text) <= _TEXT_MEMO_LEN and len(self.text_memo) < _KEY_MEMO_MAX:
                self.text_memo[text] = memo  # header values repeat (accept, user-agent, authority ...)
        out, hits = memo
        if not hits:
            return out, []
        return out, [Redaction(rule, pointer, kind, count) for rule, kind, count in hits]  # type: ignore[arg-type]

    def field(self, name: str, text: str, pointer: str) -> tuple[str, list[Redaction]]:
        """A named value (a header, a query parameter): replaced whole when a key rule names it, else ``text``."""
        rule = self._key_rule(name)
        if rule is None:
            return self.text(text, pointer)
        return marker(rule), [Redaction(rule, pointer, "key")]

    def _key_rule(self, key: str) -> str | None:
        try:
            return self.key_memo[key]
        except KeyError:
            rule = next((name for name, matches in self.keys if matches(key)), None)
            if len(self.key_memo) < _KEY_MEMO_MAX:
                self.key_memo[key] = rule
            return rule

    def _text(self, text: str, path: list[str], found: list[Redaction]) -> str:
        if self.scanner is not None and len(text) >= _ANCHORED_FROM and text.isascii():
            return self._long_text(text, path, found)
        low: str | None = None
        if self.any_hint is not None:
            low = text.lower()
            for h in self.any_hint:
                if h in low:
                    break
            else:
                return text
        for name, rx, replace, min_len, hints, _ in self.patterns:
            if len(text) < min_len:
                continue
            if hints is not None:
                low = text.lower() if low is None else low
                if not any(h in low for h in hints):
                    continue
            text, n = rx.subn(replace, text)
            if n:
                found.append(Redaction(name, _pointer(path), "pattern", n))
                low = None
        return text

    def _long_text(self, text: str, path: list[str], found: list[Redaction]) -> str:
        """``_text`` for a long ASCII text: anchored patterns tried only where one of their anchors occurs."""
        starts: list[list[int]] | None = None
        for index, (name, rx, replace, _, _, anchors) in enumerate(self.patterns):
            if anchors is None:
                text, n = rx.subn(replace, text)
            else:
                if starts is None:
                    starts = self._starts(text)
                if not starts[index]:
                    continue
                text, n = _subn_at(rx, replace, text, starts[index])
            if n:
                found.append(Redaction(name, _pointer(path), "pattern", n))
                starts = None  # the text changed: find the anchors again
        return text

    def _starts(self, text: str) -> list[list[int]]:
        """For each pattern, where its anchors put a match start in ``text`` (ASCII), ascending."""
        assert self.scanner is not None
        folded = b" " + text.encode().translate(_FOLD)
        out: list[list[int]] = [[] for _ in self.patterns]
        add = [o.append for o in out]
        single, overlaps, offsets, words = self.anchor_single, self.anchor_overlaps, self.anchor_offsets, self.words
        nested = False
        # The anchors are searched without their leading space (a space is everywhere: it would defeat the
        # search's prefilter); whether a word starts there is checked here. This loop runs per match: kept lean.
        for anchor, at, _ in self.scanner.find_matches_as_indexes(folded):  # ascending, non-overlapping
            if overlaps[anchor]:
                nested |= self._nested(folded, anchor, at, out)
            if words[anchor] and folded[at - 1] != 32:
                continue
            if single[anchor] >= 0:
                add[single[anchor]](at + offsets[anchor])
            else:
                for index in self.anchor_patterns[anchor]:
                    add[index](at + offsets[anchor])
        return [
            sorted({i for i in s if i >= 0}) if nested or not self.uniform[p] or (s and s[0] < 0) else s
            for p, s in enumerate(out)
        ]

    def _nested(self, folded: bytes, anchor: int, at: int, out: list[list[int]]) -> bool:
        """Anchors occurring inside the one found at ``at`` (the search reports none of them): added to ``out``."""
        found = False
        for shift, other in self.anchor_overlaps[anchor]:
            i = at + shift
            if folded.startswith(self.anchors[other], i) and (not self.words[other] or folded[i - 1] == 32):
                found = True
                for index in self.anchor_patterns[other]:
                    out[index].append(i + self.anchor_offsets[other])
        return found


def compile_redactor(rules: Sequence[RedactionRule], *, defaults: bool = True) -> Redactor:
    """Compile a server's redaction rules (plus the built-ins when ``defaults``)."""
    root = _Node()
    keys: list[tuple[str, Callable[[str], object]]] = []
    patterns: list[tuple[str, str]] = []
    for r in rules:
        if r.path is not None:
            node = root
            for seg in r.path[1:].split("/"):
                if seg == "*":
                    node.wild = node.wild or _Node()
                    node = node.wild
                else:
                    node = node.children.setdefault(seg.replace("~1", "/").replace("~0", "~"), _Node())
            node.rule = node.rule or r.name
        elif r.key is not None:
            keys.append((r.name, re.compile(r.key).fullmatch))
        elif r.pattern is not None:
            patterns.append((r.name, r.pattern))
    if defaults:
        keys += BUILTIN_KEYS
        patterns += BUILTIN_PATTERNS
    names = tuple(r.name for r in rules if r.path is not None) + tuple(n for n, _ in (*keys, *patterns))
    compiled = tuple(
        (n, rx, _replacer(n), _min_length(rx), *((_HINTS.get(n), _ANCHORS.get(n)) if builtin else (None, None)))
        for n, rx, builtin in ((n, re.compile(p), (n, p) in BUILTIN_PATTERNS) for n, p in patterns)
    )
    written = sorted({a for p in compiled if p[5] is not None for a, _ in p[5]})
    anchors = sorted({a.lstrip(" ") for a in written})
    # An anchor " w" found at folded index i puts the match at i + offset; "w" is found one further on.
    offsets = {a.lstrip(" "): offset - (len(a) - len(a.lstrip(" "))) for p in compiled if p[5] for a, offset in p[5]}
    spaced = {a.lstrip(" ") for a in written if a.startswith(" ")}
    if spaced & {a for a in written if not a.startswith(" ")}:
        raise ValueError("an anchor is written both with and without a leading space")
    starts_of = tuple(
        tuple(i for i, p in enumerate(compiled) if p[5] and a in {w.lstrip(" ") for w, _ in p[5]}) for a in anchors
    )
    return Redactor(
        paths=root if root.children or root.wild else None,
        keys=tuple(keys),
        patterns=compiled,
        any_hint=_any_hint(compiled),
        rules=names,
        scanner=BytesAhoCorasick([a.encode() for a in anchors], matchkind=MatchKind.LeftmostFirst) if anchors else None,
        anchors=tuple(a.encode() for a in anchors),
        anchor_offsets=tuple(offsets[a] for a in anchors),
        words=tuple(a in spaced for a in anchors),
        anchor_single=tuple(single[0] if len(single) == 1 else -1 for single in starts_of),
        uniform=tuple(p[5] is None or len({offsets[a.lstrip(" ")] for a, _ in p[5]}) <= 1 for p in compiled),
        anchor_patterns=starts_of,
        anchor_overlaps=tuple(_overlaps(a, anchors) for a in anchors),
    )


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


_KEY_MEMO_MAX = 4096
_TEXT_MEMO_LEN = 256


def _any_hint(patterns: Sequence[tuple[Any, ...]]) -> tuple[str, ...] | None:
    if not patterns or any(p[4] is None for p in patterns):
        return None  # a pattern without hints must always run
    return tuple(sorted({h for p in patterns for h in p[4]}))


def _subn_at(
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


def _min_length(rx: re.Pattern[str]) -> int:
    """The shortest string ``rx`` can match (0 if unknown): from the regex parser's own width computation."""
    try:
        return int(re._parser.parse(rx.pattern, rx.flags).getwidth()[0])  # type: ignore[attr-defined]
    except Exception:
        return 0


def _step(nodes: tuple[_Node, ...], seg: str) -> tuple[_Node, ...]:
    if not nodes:
        return nodes
    out = []
    for n in nodes:
        child = n.children.get(seg)
        if child is not None:
            out.append(child)
        if n.wild is not None:
            out.append(n.wild)
    return tuple(out)


def _is_empty(v: Any) -> bool:
    # "password": "" or null leaks nothing; leaving it shows the field was empty, which helps debugging.
    return v is None or v == ""


def _pointer(path: list[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in path)


def _replacer(name: str) -> Callable[[re.Match[str]], str]:
    mark = marker(name)

    def replace(m: re.Match[str]) -> str:
        if "value" in m.re.groupindex and m.group("value") is not None:
            start, end = m.start("value") - m.start(), m.end("value") - m.start()
            return m.group(0)[:start] + mark + m.group(0)[end:]
        return mark

    return replace
