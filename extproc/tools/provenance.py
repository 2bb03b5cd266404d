"""Offline proof of what a caller was shown: every call's fingerprint must name a definition recorded earlier in the
same recording, and every recorded definition must hash to its fingerprint (RFC 8785 + SHA-256, fingerprint.py).

Run by ``load_session`` (so by ``sessions verify``, ``sessions show`` and the audit API) beside the hash chains and
manifests, which prove the lines are as written; this proves the lines agree with each other.
"""

from __future__ import annotations

from typing import Any

from extproc.recording.chain import Problem
from extproc.tools.fingerprint import DefinitionError, fingerprint


def definition_links(events: list[dict[str, Any]]) -> list[Problem]:
    """Problems with the definition/call links of one session's events (in time order)."""
    problems: list[Problem] = []
    known: set[str] = set()
    for ev in events:
        kind = ev.get("type")
        where = (str(ev.get("_writer", "")), int(ev.get("seq", 0) or 0))
        if kind == "tool.definition":
            claimed = ev.get("fingerprint")
            try:
                actual = fingerprint(ev.get("definition"))  # type: ignore[arg-type]
            except DefinitionError as e:
                problems.append(Problem(*where, f"tool.definition {ev.get('name')!r}: {e}"))
                continue
            if actual != claimed:
                problems.append(
                    Problem(*where, f"tool.definition {ev.get('name')!r} does not hash to {claimed} (it is {actual})")
                )
                continue
            known.add(actual)
        elif kind == "policy.decision" and isinstance(ev.get("definition"), dict):
            fp = ev["definition"].get("fingerprint")
            if fp is not None and fp not in known:
                problems.append(
                    Problem(
                        *where, f"{ev.get('call', 'call')}: fingerprint {fp} names no definition recorded before it"
                    )
                )
    return problems
