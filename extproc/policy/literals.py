"""Text a regex cannot match without: a substring test that skips a policy's own redaction pattern where it cannot
match, before the regex scans the text.

A policy's patterns have no anchors (policy/anchors.py knows only the built-ins), and a regex such as an e-mail
address pattern (``[A-Za-z0-9._%+-]+@...``) tries every position of a text: about 2 ms per 64 KiB of ordinary
words, per pattern, for every long string recorded. But a match must contain the pattern's literal characters
that are not optional (the ``@``); ``str.__contains__`` finds one at memory speed. ``requirements`` reads them
from the regex parser's own tree: runs of literals outside optional repeats, alternations (one literal run per
branch, any of them), groups. Anything it does not know (classes, look-arounds, back references, conditionals)
requires nothing, so the test is only ever a necessary condition. Under ``IGNORECASE`` only ASCII characters that
are not letters count (a letter matches other cases, and four characters outside ASCII match ASCII letters).
"""

from __future__ import annotations

import re
from re import _constants as sre  # type: ignore[attr-defined]
from re import _parser as sre_parse  # type: ignore[attr-defined]
from typing import Any

Requirement = tuple[str, ...]  # one of these substrings is in every match
MAX_REQUIREMENTS = 3  # the longest ones: each costs a search of the text


def requirements(pattern: str) -> tuple[Requirement, ...]:
    """Substrings every match of ``pattern`` holds: each entry names alternatives, one of which must occur."""
    try:
        tree = sre_parse.parse(pattern)
    except (re.error, RecursionError):
        return ()
    found = _sequence(list(tree), bool(tree.state.flags & re.IGNORECASE))
    found.sort(key=lambda alts: -min(len(a) for a in alts))
    return tuple(found[:MAX_REQUIREMENTS])


def may_match(requires: tuple[Requirement, ...], text: str) -> bool:
    """False when ``text`` lacks one of ``requires``: the pattern cannot match it."""
    return all(any(s in text for s in alts) for alts in requires)


def _sequence(items: list[tuple[Any, Any]], folding: bool) -> list[Requirement]:
    """Requirements of a sequence of nodes: each run of literals, and each required part of its nodes."""
    out: list[Requirement] = []
    run: list[str] = []
    for op, av in items:
        if op is sre.LITERAL and _exact(av, folding):
            run.append(chr(av))
            continue
        if run:
            out.append(("".join(run),))
            run = []
        out += _node(op, av, folding)
    if run:
        out.append(("".join(run),))
    return out


def _node(op: Any, av: Any, folding: bool) -> list[Requirement]:
    if op is sre.SUBPATTERN:
        _, add, remove, body = av
        return _sequence(list(body), (folding or bool(add & re.IGNORECASE)) and not remove & re.IGNORECASE)
    if op is sre.ATOMIC_GROUP:
        return _sequence(list(av), folding)
    if op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
        low, _, body = av
        return _sequence(list(body), folding) if low >= 1 else []
    if op is sre.BRANCH:
        alternatives: list[str] = []
        for branch in av[1]:
            found = _sequence(list(branch), folding)
            if not found:
                return []  # a branch that requires nothing: the alternation requires nothing
            alternatives.append(max((a for alts in found if len(alts) == 1 for a in alts), key=len, default=""))
            if not alternatives[-1]:
                return []
        return [tuple(sorted(set(alternatives)))]
    return []  # classes, anchors, look-arounds, back references, conditionals: nothing required


def _exact(code: int, folding: bool) -> bool:
    """A literal that matches only itself (under IGNORECASE: an ASCII character that is not a letter)."""
    return not folding or (code < 128 and not chr(code).isalpha())
