"""Find the recording unit a user-given id names: a unit key, a server's session id, or a client's bound id.

A server's session is recorded under ``u_<server>_<backend>_<id>`` (extproc/reserved.py), so that no upstream
can write into or hide inside another server's unit; recordings made before that are keyed by the bare id and
stay readable: the bare key is tried first.
"""

from __future__ import annotations

import re
from typing import Any

from extproc.authn.session_binding import server_id_of
from extproc.recording.store import safe_key
from extproc.reserved import parse_server_unit


def unit_keys(store: Any, session_id: str) -> list[str]:
    """Store keys ``session_id`` may name, best first (the id as a key, then the server units recording it)."""
    ids = list(dict.fromkeys([session_id, server_id_of(session_id) or session_id]))
    keys = store.list_sessions()
    present = set(keys)
    out = [safe_key(i) for i in ids if safe_key(i) in present]
    for k in keys:
        unit = parse_server_unit(k)
        if unit is not None and unit[2] in ids and k not in out:
            out.append(k)
    return out


_RUN = re.compile(r"r-([0-9a-f]{16})-([0-9a-f]+)")  # a stateless run's window unit (extproc/mcp/protocol.py)


def run_windows(keys: list[str], unit: str) -> tuple[str | None, str | None]:
    """For a stateless run's unit ``r-<client key>-<window start>``: the same client's runs of the nearest earlier
    and later windows among ``keys`` (a client busy across a window boundary continues in the next one)."""
    this = _RUN.fullmatch(unit)
    if this is None:
        return None, None
    starts = sorted((int(m[2], 16), k) for k in keys if (m := _RUN.fullmatch(k)) and m[1] == this[1])
    at = starts.index((int(this[2], 16), unit)) if (int(this[2], 16), unit) in starts else -1
    before = starts[at - 1][1] if at > 0 else None
    after = starts[at + 1][1] if 0 <= at < len(starts) - 1 else None
    return before, after
