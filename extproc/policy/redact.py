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

from extproc.policy.anchors import ANCHORED_FROM, ANCHORS, AnchorScan, folds_to_ascii, subn_at
from extproc.policy.literals import Requirement, may_match, requirements
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
# Field names the MCP schema itself defines whose words sound like a credential but whose values are protocol
# identifiers: ``progressToken`` names the progress stream of one request (every notifications/progress carries
# it). Redacting them blanks every progress event of every recording and hides nothing secret.
# tests/unit/policy/test_policy_redact.py runs the built-ins against every field name of the installed SDK's schema.
MCP_PROTOCOL_FIELDS: frozenset[str] = frozenset({"progressToken"})


def is_secret_field(name: str) -> bool:
    """True when a JSON key's name says its value is a credential, MCP's own protocol fields excepted."""
    return name not in MCP_PROTOCOL_FIELDS and is_secret_name(name)


# A key whose name says "credential" (password, api_key, clientSecret, x-github-pat ...): the one classifier that
# also decides which headers and query parameters are never recorded.
BUILTIN_KEYS: tuple[tuple[str, Callable[[str], bool]], ...] = ((SECRET_NAME_RULE, is_secret_field),)


RedactionKind = Literal["path", "key", "pattern"]


@dataclass(frozen=True, slots=True)
class Redaction:
    """One replacement: which rule replaced what (a JSON pointer into the payload), never the secret itself."""

    rule: str
    pointer: str
    kind: RedactionKind
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
    # (name, regex, replacement, shortest match, hints, anchors): see _HINTS and policy/anchors.py
    patterns: tuple[_Pattern, ...]
    rules: tuple[str, ...]  # every rule name, for summaries
    # When every pattern has hints: one search for any hint decides whether a text needs the patterns at all.
    any_hint: tuple[str, ...] | None = None
    # Long texts: where the anchored (built-in) patterns can start, found in one pass (policy/anchors.py).
    anchored: AnchorScan | None = None
    # Per pattern: substrings its every match holds (a policy's own patterns, policy/literals.py); () for none.
    requires: tuple[tuple[Requirement, ...], ...] = ()
    # Object keys repeat endlessly ("jsonrpc", "params", "text"): remember each key's rule, bounded because
    # keys come from clients and servers.
    key_memo: dict[str, str | None] = field(default_factory=dict)
    text_memo: dict[str, tuple[str, tuple[tuple[str, RedactionKind, int], ...]]] = field(default_factory=dict)

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
        return out, [Redaction(rule, pointer, kind, count) for rule, kind, count in hits]

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
        if self.anchored is not None and len(text) >= ANCHORED_FROM and not folds_to_ascii(text):
            return self._long_text(text, path, found)
        low: str | None = None
        if self.any_hint is not None:
            low = text.lower()
            for h in self.any_hint:
                if h in low:
                    break
            else:
                return text
        for index, (name, rx, replace, min_len, hints, _) in enumerate(self.patterns):
            if len(text) < min_len or (self.requires[index] and not may_match(self.requires[index], text)):
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
        """``_text`` for a long text: anchored patterns tried only where one of their anchors occurs."""
        assert self.anchored is not None
        starts: list[list[int]] | None = None
        for index, (name, rx, replace, _, _, anchors) in enumerate(self.patterns):
            if anchors is None:
                if self.requires[index] and not may_match(self.requires[index], text):
                    continue
                text, n = rx.subn(replace, text)
            else:
                if starts is None:
                    starts = self.anchored.starts(text)
                if not starts[index]:
                    continue
                text, n = subn_at(rx, replace, text, starts[index])
            if n:
                found.append(Redaction(name, _pointer(path), "pattern", n))
                starts = None  # the text changed: find the anchors again
        return text


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
        (n, rx, _replacer(n), _min_length(rx), *((_HINTS.get(n), ANCHORS.get(n)) if builtin else (None, None)))
        for n, rx, builtin in ((n, re.compile(p), (n, p) in BUILTIN_PATTERNS) for n, p in patterns)
    )
    return Redactor(
        paths=root if root.children or root.wild else None,
        keys=tuple(keys),
        patterns=compiled,
        any_hint=_any_hint(compiled),
        rules=names,
        anchored=AnchorScan([p[5] for p in compiled]) if any(p[5] for p in compiled) else None,
        requires=tuple(requirements(p[1].pattern) if p[4] is None else () for p in compiled),
    )


_KEY_MEMO_MAX = 4096
_TEXT_MEMO_LEN = 256


def _any_hint(patterns: Sequence[tuple[Any, ...]]) -> tuple[str, ...] | None:
    if not patterns or any(p[4] is None for p in patterns):
        return None  # a pattern without hints must always run
    return tuple(sorted({h for p in patterns for h in p[4]}))


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
