"""Seeded random edits of the good record-format vector: one byte of a line, a manifest or a digest changed. The
verifiers must agree on every one of them, as on the vectors (tests/unit/evidence, tests/integration)."""

from __future__ import annotations

import base64
import copy
import json
import random
import re
from pathlib import Path
from typing import Any

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "record-format"
_BYTES = b'0123456789"{}:,. \\\nx\xc3\x80'


def mutations(seed: int, count: int) -> list[dict[str, Any]]:
    """``count`` bundles, each the good vector with one byte replaced (deterministic for ``seed``)."""
    good = json.loads((VECTORS / "cases" / "good" / "bundle.json").read_bytes())
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        doc = copy.deepcopy(good)
        where = rng.choice(["data", "manifest", "digest"])
        if where == "data":
            holder, field = rng.choice(doc["streams"]), "data"
        elif where == "manifest":
            holder = rng.choice(doc["streams"])["manifests"]
            field = rng.randrange(len(holder))
        else:
            holder, field = rng.choice(doc["digests"]), "data"
        raw = bytearray(base64.b64decode(holder[field]))
        raw[rng.randrange(len(raw))] = rng.choice(_BYTES)
        holder[field] = base64.b64encode(bytes(raw)).decode()
        out.append(doc)
    return out


def comparable(findings: list[str]) -> list[str]:
    """Findings as every verifier words them: a parser's own error text after "unreadable" is theirs."""
    return sorted(re.sub(r"unreadable \(edited or corrupted\): .*", "unreadable", f, flags=re.S) for f in findings)
