"""Envoy HeaderMap <-> plain dicts (lower-case names; pseudo-headers such as ':path' kept)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Protocol
from urllib.parse import unquote_plus

from envoy.config.core.v3 import base_pb2

from extproc.secrets import SECRET_NAME_RULE, is_secret_name, marker


def to_dict(header_map: base_pb2.HeaderMap) -> dict[str, str]:
    """Flatten a HeaderMap; repeated names are joined with ', ' as HTTP allows."""
    out: dict[str, str] = {}
    for h in header_map.headers:
        raw = h.raw_value
        value = raw.decode("utf-8", "replace") if raw else h.value
        key = h.key.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def to_dict_and_names(header_map: base_pb2.HeaderMap) -> tuple[dict[str, str], list[str]]:
    """``to_dict``, and the names as sent (repeats kept), read in the same pass over the protobuf."""
    out: dict[str, str] = {}
    names: list[str] = []
    for h in header_map.headers:
        raw, name = h.raw_value, h.key
        value = raw.decode("utf-8", "replace") if raw else h.value
        names.append(name)
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out, names


def is_credential(name: str) -> bool:
    """True for headers that may carry a secret (by name); they are dropped from recordings.

    Pseudo-headers are Envoy's own and never credentials (':authority' contains "auth"); a token in ':path' is
    a query value, replaced by ``recordable_path``.
    """
    return is_secret_name(name)


class ValueRedactor(Protocol):
    """The recording redactions of a server (``policy.redact.Redactor``): key rules and value patterns."""

    def key_rule(self, key: str) -> str | None: ...

    def text(self, text: str, pointer: str) -> tuple[str, list[Any]]: ...

    def field(self, name: str, text: str, pointer: str) -> tuple[str, list[Any]]: ...


def recordable_path(path: str, redactor: ValueRedactor | None = None) -> tuple[str, list[dict[str, Any]]]:
    """The request path as it may be recorded, and what was redacted in it (rule and where).

    Query parameters named like credentials (the secrets classifier, then the policy's key rules) lose their
    value; every other value, decoded, and the path itself go through the value patterns (bearer tokens, JWTs,
    cloud keys, the policy's own patterns). A redacted query value is replaced whole.
    """
    base, sep, query = path.partition("?")
    found: list[dict[str, Any]] = []
    if redactor is not None:
        base = _text(redactor, base, "/path", found)
    if not sep:
        return base, found
    pairs = []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        name = unquote_plus(key)
        rule = SECRET_NAME_RULE if is_secret_name(name) else redactor.key_rule(name) if redactor else None
        if eq and value and rule is not None:
            found.append({"rule": rule, "pointer": f"/query/{name}", "kind": "key", "count": 1})
            value = marker(rule)
        elif eq and redactor is not None:
            decoded = unquote_plus(value)
            before = len(found)
            if _text(redactor, decoded, f"/query/{name}", found) != decoded:
                value = marker(found[before]["rule"])
        pairs.append(f"{key}{eq}{value}")
    return f"{base}?{'&'.join(pairs)}", found


def recordable(
    headers: dict[str, str], redactor: ValueRedactor | None = None
) -> tuple[dict[str, str], list[str], list[dict[str, Any]]]:
    """Headers as they may be recorded: credential headers left out (their names returned), ``:path`` through
    ``recordable_path``, and every other value through the redactor's key rules and value patterns."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    found: list[dict[str, Any]] = []
    for k, v in headers.items():
        if is_secret_name(k):
            dropped.append(k)
        elif k == ":path":
            kept[k], in_path = recordable_path(v, redactor)
            found += in_path
        elif redactor is None:
            kept[k] = v
        else:
            kept[k], redactions = redactor.field(k, v, f"/headers/{k}")
            if redactions:
                found += [asdict(r) for r in redactions]
    return kept, dropped, found


def _text(redactor: ValueRedactor, text: str, pointer: str, found: list[dict[str, Any]]) -> str:
    out, redactions = redactor.text(text, pointer)
    if redactions:
        found += [asdict(r) for r in redactions]
    return out
