"""Find the recording unit a user-given id names: a unit key, a server's session id, or a client's bound id.

A server's session is recorded under ``u_<server>_<backend>_<id>`` (extproc/reserved.py), so that no upstream
can write into or hide inside another server's unit; recordings made before that are keyed by the bare id and
stay readable: the bare key is tried first.
"""

from __future__ import annotations

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
