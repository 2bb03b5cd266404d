"""Glob flavours: names (``*`` crosses '/') and URIs (``*`` stops at '/', ``**`` crosses it)."""

from __future__ import annotations

import pytest

from extproc.policy.globs import compile_globs, glob_to_regex


@pytest.mark.parametrize(
    ("patterns", "uri", "value", "expected"),
    [
        pytest.param(["get_*"], False, "get_file", True, id="name-prefix"),
        pytest.param(["get_*"], False, "xget_file", False, id="name-anchored"),
        pytest.param(["notifications/*"], False, "notifications/resources/updated", True, id="name-star-crosses-slash"),
        pytest.param(["summari[sz]e"], False, "summarise", True, id="class"),
        pytest.param(["[!d]*"], False, "delete", False, id="negated-class"),
        pytest.param(["?et"], False, "get", True, id="question-mark"),
        pytest.param(["a.b"], False, "axb", False, id="dot-is-literal"),
        pytest.param(["file:///docs/*"], True, "file:///docs/a.md", True, id="uri-one-level"),
        pytest.param(["file:///docs/*"], True, "file:///docs/x/a.md", False, id="uri-star-stops-at-slash"),
        pytest.param(["file:///docs/**"], True, "file:///docs/x/a.md", True, id="uri-double-star"),
        pytest.param(["file:///docs/?"], True, "file:///docs//", False, id="uri-question-not-slash"),
        pytest.param(["*"], True, "any://thing/at/all", True, id="lone-star-matches-all"),
        pytest.param(["exact", "other"], False, "other", True, id="exact-set"),
    ],
)
def test_matching(patterns: list[str], uri: bool, value: str, expected: bool) -> None:
    assert compile_globs(patterns, uri=uri)(value) is expected


@pytest.mark.parametrize("bad", ["", "get_[", "x[]"])
def test_bad_globs(bad: str) -> None:
    with pytest.raises(ValueError):
        glob_to_regex(bad)


def test_exact_names_need_no_regex() -> None:
    m = compile_globs(["a", "b"])
    assert m.regex is None and not m.has_wildcards and m.exact == {"a", "b"}
