"""Glob patterns for policy targets, compiled once into exact-name sets and anchored regexes.

Two flavours, because names and URIs need different things:

* names (methods, tools, prompts): ``*`` matches any run of characters, so ``notifications/*`` covers
  ``notifications/resources/updated`` and ``get_*`` covers every tool starting with ``get_``;
* URIs (resources): ``*`` and ``?`` stop at ``/`` and ``**`` crosses it, so ``file:///srv/docs/*`` does not
  reach into subdirectories. A lone ``*`` or ``**`` matches everything in both flavours.

``[abc]``, ``[a-z]`` and ``[!abc]`` are character classes. There is no escape character: ``*?[`` cannot
appear literally in a pattern (no MCP method, tool or prompt name needs them).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_META = frozenset("*?[")


def is_glob(pattern: str) -> bool:
    """True if the pattern has a wildcard or character class (otherwise it is an exact name)."""
    return any(c in _META for c in pattern)


def glob_to_regex(pattern: str, *, uri: bool = False) -> str:
    """Translate a glob into an anchored-at-use regex source; raises ValueError with a plain message."""
    if not pattern:
        raise ValueError("empty pattern")
    star, one = ("[^/]*", "[^/]") if uri else (".*", ".")
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "*":
            if pattern.startswith("**", i):
                out.append(".*")
                i += 2
                continue
            out.append(star)
        elif c == "?":
            out.append(one)
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                raise ValueError(f"unterminated character class in glob {pattern!r}")
            body = pattern[i + 1 : end]
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            if not body:
                raise ValueError(f"empty character class in glob {pattern!r}")
            chars = "".join("\\" + ch if ch in "\\^]" else ch for ch in body)
            if negate:
                chars = chars + ("/" if uri else "")
            out.append(f"[{'^' if negate else ''}{chars}]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    source = "".join(out)
    try:
        re.compile(source)
    except re.error as e:
        raise ValueError(f"invalid glob {pattern!r}: {e}") from None
    return source


def check_glob(pattern: str, *, uri: bool = False) -> str:
    """Validate a glob (for model validators); returns it unchanged."""
    glob_to_regex(pattern, uri=uri)
    return pattern


@dataclass(frozen=True, slots=True)
class Matcher:
    """A compiled list of globs: exact names hit a frozenset, wildcards one combined regex."""

    exact: frozenset[str]
    regex: re.Pattern[str] | None
    everything: bool

    def __call__(self, value: str) -> bool:
        """Does ``value`` match any pattern of the list?"""
        if self.everything or value in self.exact:
            return True
        return self.regex is not None and self.regex.fullmatch(value) is not None

    @property
    def has_wildcards(self) -> bool:
        """True when matching needs more than a set lookup."""
        return self.everything or self.regex is not None


def compile_globs(patterns: list[str] | tuple[str, ...], *, uri: bool = False) -> Matcher:
    """Compile a list of globs into one Matcher."""
    everything = any(p in ("*", "**") for p in patterns)
    exact = frozenset(p for p in patterns if not is_glob(p))
    wild = [glob_to_regex(p, uri=uri) for p in patterns if is_glob(p)]
    regex = re.compile("|".join(f"(?:{w})" for w in wild)) if wild and not everything else None
    return Matcher(exact=exact, regex=regex, everything=everything)
