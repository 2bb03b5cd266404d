"""Fingerprints: RFC 8785 canonical JSON, SHA-256, the whole definition."""

from __future__ import annotations

import hashlib

import pytest

from extproc.tools.fingerprint import DefinitionError, canonical, fingerprint

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
