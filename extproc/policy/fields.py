"""The constrained strings and lists of the policy file format: names, server names, globs, regular expressions,
JSON pointers, durations. Each validates one value with a message a policy author can act on; the
``WithJsonSchema`` annotations only shape policies/schema.json (editor hints).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

from extproc.mcp.methods import KNOWN_METHODS
from extproc.policy.globs import check_glob, compile_globs
from extproc.reserved import is_reserved_rule_name
from extproc.timespec import parse_duration

_RULE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_SERVER = re.compile(r"^(\*|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$")
_POINTER_SEGMENT = re.compile(r"^([^~]|~[01])*$")


def _rule_name(v: str) -> str:
    if not _RULE_NAME.match(v):
        raise ValueError("must start with a letter or digit and use only letters, digits, '.', '_' and '-'")
    if is_reserved_rule_name(v):
        raise ValueError(f"{v!r} is reserved (default-deny and builtin-* are names the gateway uses)")
    return v


def _regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as e:
        raise ValueError(f"invalid regular expression {v!r}: {e}") from None
    return v


def _server(v: str) -> str:
    if not _SERVER.match(v):
        raise ValueError(f"server {v!r} is not a server name from gateway.yaml (lowercase, digits, '-') or '*'")
    return v


def _method(v: str) -> str:
    matcher = compile_globs([check_glob(v)])
    if not any(matcher(m) for m in KNOWN_METHODS):  # a pattern that can never fire is almost always a typo
        raise ValueError(f"method {v!r} matches no MCP method (e.g. tools/call, resources/read, notifications/*)")
    return v


def check_pointer(v: str) -> str:
    """A JSON pointer (RFC 6901) as written in a policy; ValueError says what is wrong."""
    if not v.startswith("/"):
        raise ValueError(f"JSON pointer {v!r} must start with '/', e.g. /params/arguments/token")
    if not all(_POINTER_SEGMENT.match(s) for s in v[1:].split("/")):
        raise ValueError(f"JSON pointer {v!r}: '~' must be followed by 0 or 1 (RFC 6901)")
    return v


def _scalars(v: list[Any] | None) -> list[Any] | None:
    if v is not None and not v:
        raise ValueError("values must list at least one value")
    if v is not None and not all(isinstance(x, str | int | float | bool) for x in v):
        raise ValueError("values must be strings, numbers or booleans")
    return v


# The WithJsonSchema annotations only shape policies/schema.json (editor hints); validation is the AfterValidator.
RuleName = Annotated[
    str,
    AfterValidator(_rule_name),
    WithJsonSchema({"type": "string", "pattern": _RULE_NAME.pattern, "description": "Unique across all files."}),
]
Regex = Annotated[str, AfterValidator(_regex), WithJsonSchema({"type": "string", "format": "regex"})]
ServerName = Annotated[str, AfterValidator(_server), WithJsonSchema({"type": "string", "pattern": _SERVER.pattern})]
NameGlob = Annotated[str, AfterValidator(check_glob)]
UriGlob = Annotated[str, AfterValidator(lambda v: check_glob(v, uri=True))]
MethodGlob = Annotated[
    str,
    AfterValidator(_method),
    WithJsonSchema({"anyOf": [{"enum": list(KNOWN_METHODS)}, {"type": "string", "pattern": r"[*?\[]"}]}),
]
Pointer = Annotated[str, AfterValidator(check_pointer)]
Scalars = Annotated[
    list[Any] | None,
    AfterValidator(_scalars),
    WithJsonSchema({"type": "array", "items": {"type": ["string", "number", "boolean"]}, "minItems": 1}),
]


def _per(v: str) -> str:
    if parse_duration(v) > 366 * 86400:  # raises ValueError naming the form
        raise ValueError(f"per {v!r}: at most 366d (a budget's window, not a date)")
    return v


Per = Annotated[str, AfterValidator(_per), WithJsonSchema({"type": "string", "pattern": r"^\d+(\.\d+)?[smhd]$"})]


_TTL = re.compile(r"^[1-9][0-9]{0,6}[smhd]$")


def _ttl(v: str) -> str:
    if not _TTL.match(v):
        raise ValueError(f"ttl {v!r}: use a number and s, m, h or d (e.g. 15m)")
    if ttl_seconds(v) > 7 * 86400:
        raise ValueError(f"ttl {v!r}: an approval lasts at most 7 days")
    return v


def ttl_seconds(v: str) -> float:
    """Seconds of a valid ttl (``15m``)."""
    return float(int(v[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[v[-1]])


Ttl = Annotated[str, AfterValidator(_ttl), WithJsonSchema({"type": "string", "pattern": _TTL.pattern})]
