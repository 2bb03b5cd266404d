"""JSON for every recording path: orjson (fast), with the standard library as the exact fallback.

orjson refuses integers beyond 64 bits and NaN/Infinity on parse, and reads big integers as floats; JSON-RPC ids
are client-controlled, so those rare documents go through ``json`` and come back exactly as written.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

_LONG_NUMBER = re.compile(rb"\d{19}")  # 19+ digits may not fit 64 bits: orjson would read it as a float


def dumps(doc: Any) -> bytes:
    """Compact UTF-8 JSON (non-ASCII kept as is)."""
    try:
        return orjson.dumps(doc)
    except TypeError:  # an integer beyond 64 bits, a non-string key, a lone surrogate (from a "\ud800" escape)
        return _exact(doc, sort_keys=False)


def dumps_sorted(doc: Any) -> bytes:
    """Canonical form (keys sorted): what signatures and digests cover."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return _exact(doc, sort_keys=True)


def _exact(doc: Any, sort_keys: bool) -> bytes:
    text = json.dumps(doc, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode()
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form: keep it as its JSON escape, losing nothing
        return json.dumps(doc, sort_keys=sort_keys, separators=(",", ":"), ensure_ascii=True).encode()


def loads(raw: bytes | str) -> Any:
    """Parse; ValueError (``json.JSONDecodeError`` or orjson's, both ValueError) when it is not JSON."""
    data = raw.encode() if isinstance(raw, str) else raw
    if _LONG_NUMBER.search(data) is None:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass  # NaN, Infinity, or truly broken: the standard parser decides
    return json.loads(data)
