"""Long texts: the built-in patterns tried only where they can start give exactly what a full regex scan gives."""

from __future__ import annotations

import random
import re

import pytest

from extproc.policy.anchors import ANCHORED_FROM, FOLD, folds_to_ascii, subn_at
from extproc.policy.redact import BUILTIN_PATTERNS, Redactor, _replacer, compile_redactor

FRAGMENTS = [
    "the", "quick", "rapid", "tokenizer", "apiary", "Token", "TOKEN=abc123", "token: 'xyz'", "api_key=K3y",
    "api-key: v", "apikey=q", "pwd=hunter2", "passwd:pw", "Password = \"s3cr3t\"", "secret=shh", "xsecret=no",
    "Bearer abc.def-ghi", "bearer   tok/en==", "xbearer nope", "eyJhbGciOi.eyJzdWIiOiJ4.sig_part",
    "xeyJabcd.eyJabcd.x", "AKIAABCDEFGHIJKLMNOP", "ASIA0123456789ABCDEF", "xAKIAABCDEFGHIJKLMNOP",
    "ghp_" + "a" * 36, "github_pat_" + "b" * 22, "gho_short", "aws_secret_access_key=" + "c" * 40,
    "AWS SECRET ACCESS KEY: " + "d" * 40, "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
    "-----BEGIN PRIVATE KEY----- unterminated", "-----begin lower", "asiaws_secret_access_key=" + "e" * 40,
    "secretoken=abc", "AKIAWS", "ASIAKIA" + "F" * 16, "passwordpwd=1", "awsecret=2",
    "github_pat_ghp_" + "g" * 36, " ", "\n", ",", ";", "&", "}", "=", ":", "'",
]  # fmt: skip


def _scan(redactor: Redactor, text: str) -> list[list[int]]:
    assert redactor.anchored is not None
    return redactor.anchored.starts(text)


def _texts(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        words = [rng.choice(FRAGMENTS) for _ in range(rng.randint(40, 400))]
        out.append("".join(w + rng.choice(["", " ", "  ", "\t", "_", "-"]) for w in words))
    return out


@pytest.mark.parametrize(("name", "pattern"), BUILTIN_PATTERNS, ids=[n for n, _ in BUILTIN_PATTERNS])
def test_anchored_substitution_equals_a_full_scan(name: str, pattern: str) -> None:
    rx, replace = re.compile(pattern), _replacer(name)
    for text in _texts(len(name), 60):
        assert text.isascii()
        starts = [i for i in range(len(text)) if rx.match(text, i)]  # every place a match can start
        anchored = _scan(compile_redactor([], defaults=True), text)[[n for n, _ in BUILTIN_PATTERNS].index(name)]
        assert set(starts) <= set(anchored), text  # the anchors find every one of them
        assert subn_at(rx, replace, text, anchored) == rx.subn(replace, text), text


def test_long_strings_redacted_as_before() -> None:
    redactor = compile_redactor([], defaults=True)
    for text in _texts(7, 60):
        assert len(text) >= ANCHORED_FROM
        expected, hits = text, []
        for name, pattern in BUILTIN_PATTERNS:  # the built-ins one by one, in order, over the whole text
            expected, n = re.compile(pattern).subn(_replacer(name), expected)
            if n:
                hits.append((name, n))
        out, found = redactor.apply({"text": text})
        assert out == {"text": expected}
        assert [(r.rule, r.count) for r in found] == hits


def test_every_anchor_occurrence_is_found_even_inside_another() -> None:
    redactor = compile_redactor([], defaults=True)
    for text in _texts(11, 40):
        text = text.replace(" ", "")  # anchors run into each other
        folded = b" " + text.encode().translate(FOLD)
        starts = _scan(redactor, text)
        for index, (_, _, _, _, _, anchors) in enumerate(redactor.patterns):
            assert anchors is not None
            expected = {
                i + offset for a, offset in anchors for i in range(len(folded)) if folded.startswith(a.encode(), i)
            }
            assert starts[index] == sorted(i for i in expected if i >= 0)


def test_non_ascii_long_text_takes_the_full_scan() -> None:
    redactor = compile_redactor([], defaults=True)
    text = "\u0130" * 300 + " password=hunter2 " + "\u017fecret=x " * 40  # lower() changes lengths here
    out, found = redactor.apply(text)
    assert "hunter2" not in out
    assert [r.rule for r in found] == ["builtin-password-assignment"]


# Text outside ASCII (UTF-8 of 2, 3 and 4 bytes, combining marks, Unicode spaces and letters beside the anchors),
# and the four characters that (?i) matches to an ASCII letter: those texts take the full scan.
UNICODE_FRAGMENTS = [
    "caf\u00e9", "na\u00efve", "\u4e2d\u6587", "\u2014", "\u201cquoted\u201d", "\U0001f600", "e\u0301",
    "token\u00a0=\u00a0v\u00e9ry", "\u00f6token=abc", "token\u00f6=1", "\u00e9AKIAABCDEFGHIJKLMNOP",
    "Bearer\u2003tok\u00e9n", "\u4e2dbearer x", "pass\u00e9word=1", "secret=\u00e9t\u00e9;", "\u00e9eyJabcd.eyJabcd.x",
    "-----BEGIN \u00c9 PRIVATE KEY-----", "\u2014-----BEGIN EC PRIVATE KEY-----\u00e9-----END EC PRIVATE KEY-----",
    "ghp_" + "\u00e9" * 36, "api_key:\u3000x", "aws_secret_access_key=" + "c" * 40 + "\u00e9",
]  # fmt: skip
FOLDING = ["\u0130", "\u0131", "\u017f", "\u212a", "to\u212aen=x", "\u017fecret=y", "ap\u0131_key=z"]


def _unicode_texts(seed: int, count: int, folding: bool = False) -> list[str]:
    rng = random.Random(seed)
    out = []
    for i in range(count):
        pool = FRAGMENTS + UNICODE_FRAGMENTS * 2 + (FOLDING if folding and i % 2 else [])
        words = [rng.choice(pool) for _ in range(rng.randint(40, 300))]
        out.append("".join(w + rng.choice(["", " ", "\u00a0", "\t", "_", "\u00e9", "-"]) for w in words))
    return out


@pytest.mark.parametrize(("name", "pattern"), BUILTIN_PATTERNS, ids=[n for n, _ in BUILTIN_PATTERNS])
def test_anchors_find_every_match_start_in_text_outside_ascii(name: str, pattern: str) -> None:
    rx, replace = re.compile(pattern), _replacer(name)
    redactor = compile_redactor([], defaults=True)
    for text in _unicode_texts(len(name) + 100, 25):
        assert not text.isascii() and not folds_to_ascii(text)
        starts = [i for i in range(len(text)) if rx.match(text, i)]
        anchored = _scan(redactor, text)[[n for n, _ in BUILTIN_PATTERNS].index(name)]  # code points
        assert set(starts) <= set(anchored), text
        assert subn_at(rx, replace, text, anchored) == rx.subn(replace, text), text


def test_text_outside_ascii_redacted_as_by_a_full_scan() -> None:
    """The same output and redactions with the prefilter as without it (every pattern over the whole text)."""
    redactor = compile_redactor([], defaults=True)
    texts = _unicode_texts(5, 60, folding=True)
    assert any(folds_to_ascii(t) for t in texts) and any(not folds_to_ascii(t) for t in texts)
    for text in texts:
        expected, hits = text, []
        for name, pattern in BUILTIN_PATTERNS:
            expected, n = re.compile(pattern).subn(_replacer(name), expected)
            if n:
                hits.append((name, n))
        out, found = redactor.apply({"text": text})
        assert out == {"text": expected}, text
        assert [(r.rule, r.count) for r in found] == hits
