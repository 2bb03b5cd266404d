"""Definition fingerprints: SHA-256 over the RFC 8785 (JSON Canonicalization Scheme) form of one listed item.

The whole item the server listed is hashed (name, title, description, input and output schema, annotations, icons,
``_meta``: everything a client may put in front of a model), so no field can change unnoticed. The canonical form is
RFC 8785's, never ``json.dumps(sort_keys=True)``: JCS also fixes number formatting and string escaping, which is what
makes the hash reproducible by another implementation.

Fast path: for the values tool definitions are made of (objects with ASCII keys, strings, booleans, null, integers
within JCS's safe range, arrays) the RFC 8785 form is exactly ``orjson.dumps(..., OPT_SORT_KEYS)``: no whitespace,
keys sorted (ASCII: byte order is UTF-16 order), the same string escaping (quote, backslash, the five short escapes
b f n r t, other control characters as lowercase u00xx escapes, everything else as UTF-8), integers in decimal. It
is ~20 times faster than the ``rfc8785`` library, which walks the value in Python. Anything else (a float: ECMAScript
number formatting; a non-ASCII key: UTF-16 key order; an integer out of range; any other type) goes to ``rfc8785``,
which stays the reference: the tests hold the fast path byte-equal to it on a corpus and on generated values.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
import rfc8785

PREFIX = "sha256:"


@dataclass(frozen=True, slots=True)
class Kind:
    """One kind of listed definition: the list method, the result field holding the items, the naming field."""

    name: str  # tool | prompt | resource | resource_template
    method: str
    key: str
    item: str
    use: str | None  # the method that uses one item (None: templates are not called by name)


KINDS: dict[str, Kind] = {
    k.method: k
    for k in (
        Kind("tool", "tools/list", "tools", "name", "tools/call"),
        Kind("prompt", "prompts/list", "prompts", "name", "prompts/get"),
        Kind("resource", "resources/list", "resources", "uri", "resources/read"),
        Kind("resource_template", "resources/templates/list", "resourceTemplates", "uriTemplate", None),
    )
}
BY_USE: dict[str, Kind] = {k.use: k for k in KINDS.values() if k.use is not None}


class DefinitionError(ValueError):
    """A listed item that has no canonical form (not an object, a NaN, an integer beyond 2**53)."""


_SAFE = 2**53 - 1  # JCS integers: exactly representable as an IEEE 754 double (rfc8785's own bounds)


def _plain(node: Any) -> bool:
    """Whether ``node`` holds only values whose RFC 8785 form is orjson's sorted-keys form (see the docstring)."""
    t = type(node)
    if t is str or t is bool or node is None:
        return True
    if t is int:
        return bool(-_SAFE <= node <= _SAFE)
    if t is dict:
        for k, v in node.items():
            if type(k) is not str or not k.isascii() or not _plain(v):
                return False
        return True
    if t is list:
        for v in node:
            if not _plain(v):
                return False
        return True
    return False  # float, tuple, subclasses, anything else: rfc8785 decides


def _plain_strings(node: Any, out: list[str]) -> bool:
    """``_plain``, appending every string of ``node`` (object keys too, document order) to ``out`` on the way: the
    screens read them (screens.strings gives the same list), so a definition is walked once, not twice."""
    t = type(node)
    if t is str:
        out.append(node)
        return True
    if t is dict:
        plain = True
        for k, v in node.items():
            if isinstance(k, str):
                out.append(k)
                plain = plain and type(k) is str and k.isascii()
            else:
                plain = False
            plain = _plain_strings(v, out) and plain  # walked whatever ``plain`` is: every string is wanted
        return plain
    if t is list:
        plain = True
        for v in node:
            plain = _plain_strings(v, out) and plain
        return plain
    if isinstance(node, str):  # a subclass: its strings all the same, its canonical form by rfc8785
        out.append(node)
        return False
    if isinstance(node, dict | list):
        _plain_strings(dict(node) if isinstance(node, dict) else list(node), out)
        return False
    return _plain(node)


def canonical(definition: Any, strings: list[str] | None = None) -> bytes:
    """The RFC 8785 bytes of ``definition``; DefinitionError when JSON has no canonical form for it. ``strings``:
    every string of it is appended there, from the same walk."""
    try:
        if _plain(definition) if strings is None else _plain_strings(definition, strings):
            return orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # e.g. a lone surrogate: rfc8785 says why it has no form
        pass
    except RecursionError:  # the walk stopped part way: its strings are not all there, say none are
        if strings is not None:
            strings.clear()
    try:
        return rfc8785.dumps(definition)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as e:
        raise DefinitionError(f"definition has no canonical JSON form: {e}") from e


def fingerprint(definition: dict[str, Any], strings: list[str] | None = None) -> str:
    """'sha256:<hex>' of the canonical form of one listed definition (``strings``: as for ``canonical``)."""
    if not isinstance(definition, dict):
        raise DefinitionError("a listed definition must be a JSON object")
    return PREFIX + hashlib.sha256(canonical(definition, strings)).hexdigest()
