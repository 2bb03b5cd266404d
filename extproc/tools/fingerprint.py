"""Definition fingerprints: SHA-256 over the RFC 8785 (JSON Canonicalization Scheme) form of one listed item.

The whole item the server listed is hashed (name, title, description, input and output schema, annotations, icons,
``_meta``: everything a client may put in front of a model), so no field can change unnoticed. Canonical JSON comes
from the ``rfc8785`` library, never from ``json.dumps(sort_keys=True)``: JCS also fixes number formatting and string
escaping, which is what makes the hash reproducible by another implementation.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

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


def canonical(definition: Any) -> bytes:
    """The RFC 8785 bytes of ``definition``; DefinitionError when JSON has no canonical form for it."""
    try:
        return rfc8785.dumps(definition)
    except (rfc8785.CanonicalizationError, TypeError, ValueError, RecursionError) as e:
        raise DefinitionError(f"definition has no canonical JSON form: {e}") from e


def fingerprint(definition: dict[str, Any]) -> str:
    """'sha256:<hex>' of the canonical form of one listed definition."""
    if not isinstance(definition, dict):
        raise DefinitionError("a listed definition must be a JSON object")
    return PREFIX + hashlib.sha256(canonical(definition)).hexdigest()
