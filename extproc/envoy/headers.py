"""Envoy HeaderMap <-> plain dicts (lower-case names; pseudo-headers such as ':path' kept)."""

from __future__ import annotations

import functools
import re

from envoy.config.core.v3 import base_pb2

# Never written to a recording, in any form: credentials and anything that smells like one.
CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-auth-token",
        "x-amz-security-token",
        "x-goog-api-key",
    }
)
_CREDENTIAL_WORDS = ("token", "secret", "password", "apikey", "api-key", "credential", "auth", "key", "cookie")
# Query parameters whose values are never recorded (tokens in URLs: access_token, api_key, sig, code ...).
_QUERY_CREDENTIAL = re.compile(r"(?i)token|secret|passw|key|auth|sig|code|credential|session")


def to_dict(header_map: base_pb2.HeaderMap) -> dict[str, str]:
    """Flatten a HeaderMap; repeated names are joined with ', ' as HTTP allows."""
    out: dict[str, str] = {}
    for h in header_map.headers:
        value = h.raw_value.decode("utf-8", "replace") if h.raw_value else h.value
        key = h.key.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


@functools.lru_cache(maxsize=1024)  # header names repeat endlessly; classify each once
def is_credential(name: str) -> bool:
    """True for headers that may carry a secret; they are dropped from recordings.

    Pseudo-headers are Envoy's own and never credentials (':authority' contains "auth"); a token in ':path' is
    a query value, removed by ``recordable_path``.
    """
    if name.startswith(":"):
        return False
    return name in CREDENTIAL_HEADERS or any(w in name for w in _CREDENTIAL_WORDS)


def recordable_path(path: str) -> str:
    """The request path with the values of credential-looking query parameters replaced."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    pairs = [p.partition("=") for p in query.split("&")]
    return (
        base
        + "?"
        + "&".join(f"{k}{eq}{'[REDACTED]' if eq and _QUERY_CREDENTIAL.search(k) else v}" for k, eq, v in pairs)
    )


def recordable(headers: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """Split headers into what may be recorded and the names of the credential headers left out."""
    kept: dict[str, str] = {}
    dropped: list[str] = []
    for k, v in headers.items():
        if is_credential(k):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped
