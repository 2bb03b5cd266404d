"""A policy's own redaction patterns are skipped only where they cannot match: the literal test is a necessary
condition, so redacted output is the same as with every pattern scanning every text."""

from __future__ import annotations

import random
import re

import pytest

from extproc.policy.literals import may_match, requirements
from extproc.policy.model import Redaction as RedactionRule
from extproc.policy.redact import _replacer, compile_redactor

PATTERNS = [
    r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}",
    r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b",
    r"(?i)acct[-_ ]?id[:=]\s*(?P<value>\d{4,})",
    r"(?i:SK)-[a-z]{4}",
    r"x(?-i:Y)z",
    r"(?:ab|cd)+e",
    r"(?:ab|c*)d",
    r"q?r{2}s",
    r"(?>tt)u",
    r"v++w",
    r"(?<=k)ey=\d",
    r"(a)\1b",
    r"[^@]+@",
    r"\d{3}-\d{4}",
    r"(?s)BEGIN.*?END",
    r"caf\u00e9=\w+",
]
ALPHABET = ["a", "b", "c", "d", "e", "k", "q", "r", "s", "t", "u", "v", "w", "x", "y", "z", "Y", "X", "SK", "sk",
            "@", ".", "-", "_", " ", "=", ":", "1234", "acct_id=98765", "ACCT-ID: 1234", "user@example.com",
            "ghp_" + "a" * 36, "github_pat_" + "b" * 22, "BEGIN", "END", "\u00e9", "caf\u00e9=x", "key=1",
            "\u212a", "\u0130", "\u017f"]  # fmt: skip


def _texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 60))) for _ in range(count)]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_text_without_the_literals_never_matches(pattern: str) -> None:
    rx, requires = re.compile(pattern), requirements(pattern)
    for text in _texts(len(pattern), 250):
        if rx.search(text):
            assert may_match(requires, text), (pattern, requires, text)


def test_what_is_required_is_read_from_the_regex() -> None:
    assert requirements(PATTERNS[0]) == (("@",), (".",))  # the e-mail pattern: "@" and "."
    assert requirements(r"(?i)acct[-_ ]?id[:=]\s*(?P<value>\d{4,})") == ()  # letters under IGNORECASE: none
    assert requirements(r"(?:ab|cd)+e") == (("ab", "cd"), ("e",))
    assert requirements(r"(?:ab|c*)d") == (("d",),)  # a branch requiring nothing: the alternation neither
    assert requirements(r"[a-z]+") == ()


def test_policy_patterns_redact_as_a_full_scan_does() -> None:
    rules = [RedactionRule(name=f"p{i}", pattern=p) for i, p in enumerate(PATTERNS)]
    redactor = compile_redactor(rules, defaults=False)
    for text in [*_texts(3, 300), "word " * 100 + "user@example.com", "word " * 100]:
        expected, hits = text, []
        for i, pattern in enumerate(PATTERNS):
            expected, n = re.compile(pattern).subn(_replacer(f"p{i}"), expected)
            if n:
                hits.append((f"p{i}", n))
        out, found = redactor.apply({"t": text})
        assert out == {"t": expected}, text
        assert [(r.rule, r.count) for r in found] == hits
