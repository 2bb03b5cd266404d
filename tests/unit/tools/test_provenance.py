"""sessions verify proves the link: a call's fingerprint names a recorded definition that hashes to it."""

from __future__ import annotations

from extproc.tools.fingerprint import fingerprint
from extproc.tools.provenance import definition_links

ECHO = {"name": "echo", "description": "Return the text unchanged."}


def definition(d: dict, fp: str | None = None) -> dict:
    return {"type": "tool.definition", "name": d["name"], "definition": d, "fingerprint": fp or fingerprint(d),
            "_writer": "w", "seq": 1}  # fmt: skip


def call(fp: str | None) -> dict:
    return {"type": "policy.decision", "call": "tools/call 'echo'", "definition": {"fingerprint": fp},
            "_writer": "w", "seq": 2}  # fmt: skip


def test_intact_link() -> None:
    assert definition_links([definition(ECHO), call(fingerprint(ECHO)), call(None)]) == []


def test_call_naming_an_unrecorded_definition_fails() -> None:
    other = fingerprint({**ECHO, "description": "else"})
    [problem] = definition_links([definition(ECHO), call(other)])
    assert "names no definition recorded before it" in problem.message


def test_call_before_its_definition_fails() -> None:
    assert definition_links([call(fingerprint(ECHO)), definition(ECHO)]) != []


def test_definition_not_matching_its_fingerprint_fails_and_links_nothing() -> None:
    forged = definition({**ECHO, "description": "swapped after hashing"}, fingerprint(ECHO))
    problems = definition_links([forged, call(fingerprint(ECHO))])
    assert len(problems) == 2 and "does not hash to" in problems[0].message
