"""Fingerprints: RFC 8785 canonical JSON, SHA-256, the whole definition."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.tools import fingerprint as fingerprint_module
from extproc.tools.fingerprint import DefinitionError, canonical, fingerprint
from extproc.tools.screens import strings

TOOL = {
    "name": "echo",
    "description": "Return the text unchanged.",
    "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
}


def test_key_order_and_whitespace_do_not_matter() -> None:
    reordered = {"inputSchema": TOOL["inputSchema"], "description": TOOL["description"], "name": "echo"}
    assert fingerprint(reordered) == fingerprint(TOOL)


def test_rfc8785_number_form() -> None:
    # JCS writes 1.0 as 1 and 1e21 as 1e+21 (ECMAScript number serialization), unlike json.dumps.
    assert canonical({"b": 1.0, "a": 1e21}) == b'{"a":1e+21,"b":1}'
    assert fingerprint({"x": 1.0}) == fingerprint({"x": 1})


def test_known_vector() -> None:
    expected = hashlib.sha256(b'{"description":"d","name":"t"}').hexdigest()
    assert fingerprint({"name": "t", "description": "d"}) == f"sha256:{expected}"


@pytest.mark.parametrize(
    "field,value",
    [
        ("description", "Return the text unchanged!"),
        ("title", "Echo"),
        ("inputSchema", {"type": "object"}),
        ("outputSchema", {"type": "object"}),
        ("annotations", {"destructiveHint": True}),
        ("_meta", {"x": 1}),
    ],
)
def test_every_field_counts(field: str, value: object) -> None:
    assert fingerprint({**TOOL, field: value}) != fingerprint(TOOL)


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": 2**60}, ["not", "an", "object"]])
def test_no_canonical_form_is_an_error(bad: object) -> None:
    with pytest.raises(DefinitionError):
        fingerprint(bad)  # type: ignore[arg-type]


# Definitions and the fingerprints rfc8785 gave them before the fast path existed: recordings and pins written
# then must keep verifying. Strings with every escape JCS knows, non-ASCII text, tag characters, floats, integers at
# the edge of the safe range, and keys whose UTF-16 order differs from their code point order.
CORPUS: dict[str, tuple[dict[str, Any], str]] = {
    "plain tool": (TOOL, "b650bb9a99b1cabb6850fd4b530146ff38e1ea42f6a12fbc8f428adff1437a98"),
    "escapes": (
        {
            "name": "esc",
            "description": 'quote " backslash \\ tab \t nl \n cr \r bs \b ff \f nul \x00 us \x1f del \x7f / ls \u2028 '
            "ps \u2029",
            "annotations": {"readOnlyHint": True, "destructiveHint": False, "x": None},
        },
        "cd6a421a192cb3a941b76537e02e40958a9d3b6c47dc0e5d1e632c5cb05fcf50",
    ),
    "unicode": (
        {
            "name": "uni",
            "title": "Ünïcödé ✓ 日本語 😀",
            "description": "tag \U000e0041\U000e0042 zw \u200b bidi \u202e bom \ufeff",
            "_meta": {"n": [0, -1, 9007199254740991, -9007199254740991], "e": [], "o": {}},
        },
        "0c1a0e7e540cb6686bb9ca1e4439849cd4d98a577c420b891e3231aa6a6ceb76",
    ),
    "floats": (
        {
            "name": "num",
            "inputSchema": {
                "type": "object",
                "properties": {
                    "x": {"type": "number", "minimum": 0.5, "maximum": 1e21, "default": 1.0, "multipleOf": 1e-7}
                },
            },
        },
        "509bfd5403fb893821eaf37439ef94d1036aa0b0a11cdb0ecfc70019bf38d0fc",
    ),
    "non-ascii keys": (
        {
            "name": "keys",
            "_meta": {"\u20ac": 1, "\U0001f600": 2, "\ufb33": 3, "a": 4, "B": 5, "": 6, "aa": 7, "a\u0000": 8},
        },
        "a5f5bbd777e85ee30f8f2fbf2b93705c691d0728698fd22c5bc2d9a3354bd4b0",
    ),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_recorded_fingerprints_still_hash_the_same(name: str) -> None:
    definition, digest = CORPUS[name]
    assert fingerprint(definition) == f"sha256:{digest}"
    assert canonical(definition) == rfc8785.dumps(definition)


def test_plain_definitions_do_not_go_through_rfc8785(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fast path (orjson, sorted keys) serves what tool definitions are made of; rfc8785 walks the value in
    # Python at ~20 times the cost. It is kept for what the fast path does not handle (next test).
    def slow(obj: object) -> bytes:
        raise AssertionError("rfc8785 called for a plain definition")

    monkeypatch.setattr(fingerprint_module.rfc8785, "dumps", slow)
    for name in ("plain tool", "escapes", "unicode"):
        definition, digest = CORPUS[name]
        assert fingerprint(definition) == f"sha256:{digest}"


@pytest.mark.parametrize(
    "value",
    [
        {"x": 1.5},  # ECMAScript number form
        {"\U0001f600": 1, "\ufb33": 2},  # UTF-16 key order is not code point order here
        {"x": 2**53},  # beyond the safe range: rfc8785 refuses it
        {"x": "\ud800"},  # a lone surrogate: no UTF-8 form
        {"x": (1, 2)},  # not a JSON type orjson and rfc8785 agree on
    ],
    ids=["float", "non-ascii keys", "big int", "lone surrogate", "tuple"],
)
def test_what_the_fast_path_does_not_handle_goes_to_rfc8785(value: dict[str, Any]) -> None:
    try:
        expected: bytes | None = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError):
        expected = None
    if expected is None:
        with pytest.raises(DefinitionError):
            canonical(value)
    else:
        assert canonical(value) == expected


_KEYS = st.one_of(st.text(max_size=6), st.sampled_from(["name", "type", "a", "B", "\u20ac", "\U0001f600", "\ufb33"]))
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.integers(min_value=-(2**53) - 2, max_value=-(2**53) + 2)
    | st.integers(min_value=2**53 - 2, max_value=2**53 + 2)
    | st.floats()
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(_KEYS, inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None, database=None)
@given(st.dictionaries(_KEYS, _JSON, max_size=6))
def test_canonical_equals_rfc8785_on_generated_values(value: dict[str, Any]) -> None:
    try:
        expected: bytes | None = rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, ValueError):
        expected = None
    if expected is None:
        with pytest.raises(DefinitionError):
            canonical(value)
    else:
        assert canonical(value) == expected


@pytest.mark.parametrize("name", list(CORPUS))
def test_one_walk_gives_the_fingerprint_and_the_screens_strings(name: str) -> None:
    # The surface fingerprints and screens each definition from one walk: the strings the fingerprint's walk hands
    # over are exactly what the screens would collect themselves, for plain definitions and for rfc8785's alike.
    definition, digest = CORPUS[name]
    texts: list[str] = []
    assert fingerprint(definition, texts) == f"sha256:{digest}"
    assert texts == strings(definition)


def test_the_strings_of_a_definition_with_no_canonical_form_are_still_all_there() -> None:
    texts: list[str] = []
    with pytest.raises(DefinitionError):
        fingerprint({"a": float("nan"), "b": ["x", {"c": "y"}]}, texts)
    assert texts == ["a", "b", "x", "c", "y"]
