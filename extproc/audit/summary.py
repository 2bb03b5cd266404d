"""One recorded session reduced to the facts the index filters and authorizes on."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from extproc.policy.compiled import AUDIT_SERVER
from extproc.recording.replay import Session


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A session as the index keeps it. ``server`` is "" when the session mixes servers (only ``*`` grants see it);
    the owner is "" when it mixes identities (``own`` never matches it)."""

    key: str
    id: str
    server: str
    owner_issuer: str
    owner_subject: str
    user: str
    started: float
    ended: float
    state: str
    verified: bool
    final: bool  # every stream has its final manifest: the session will not grow
    exchanges: int
    events: int
    tools: tuple[str, ...]
    denied: int = 0  # exchanges the gateway refused (policy denials and other refusals)

    def to_json(self) -> dict[str, Any]:
        return {
            "session": self.key,
            "id": self.id,
            "server": self.server,
            "user": self.user,
            "started": self.started,
            "ended": self.ended,
            "state": self.state,
            "verified": self.verified,
            "exchanges": self.exchanges,
            "events": self.events,
            "tools": list(self.tools),
            "denied": self.denied,
        }


def _tool_names(ev: dict[str, Any]) -> list[str]:
    out = []
    for msg in ev.get("messages") or []:
        if isinstance(msg, dict) and msg.get("method") == "tools/call":
            name = (msg.get("params") or {}).get("name") if isinstance(msg.get("params"), dict) else None
            if isinstance(name, str):
                out.append(name[:200])
    return out


def summarize(key: str, session: Session) -> SessionRow:
    """The index row of a loaded (and verified) session."""
    s = session.summary()
    servers: set[str] = set()
    owners: set[tuple[str, str]] = set()
    tools: set[str] = set()
    denied = 0
    for ev in session.events:
        kind = ev.get("type", "")
        if kind == "exchange.start":
            servers.add(str(ev.get("server") or ""))
            p = ev.get("principal") or {}
            owners.add((str(p.get("issuer") or ""), str(p.get("subject") or "")))
        elif kind.startswith("audit."):
            servers.add(AUDIT_SERVER)
            owners.add(("", ""))  # the trail belongs to nobody: only `all` rules grant it
        elif kind == "mcp.request":
            tools.update(_tool_names(ev))
        elif kind == "exchange.end" and ev.get("outcome") == "denied":
            denied += 1
    owner = next(iter(owners)) if len(owners) == 1 else ("", "")
    audit = AUDIT_SERVER in servers
    return SessionRow(
        key=key,
        id=session.id,
        server=next(iter(servers)) if len(servers) == 1 else "",
        owner_issuer=owner[0],
        owner_subject=owner[1],
        user=s["user"] or "",
        started=float(s["started"] or 0.0),
        ended=float(s["ended"] or 0.0),
        state="open" if audit and session.unfinished else s["state"],
        verified=bool(s["verified"]),
        final=not session.unfinished,
        exchanges=s["exchanges"],
        events=s["events"],
        tools=tuple(sorted(tools)),
        denied=denied,
    )


def row_from_db(r: tuple[Any, ...]) -> SessionRow:
    (key, sid, server, iss, sub, user, started, ended, state, verified, final, exchanges, events, tools, denied) = r
    return SessionRow(
        key,
        sid,
        server,
        iss,
        sub,
        user,
        started,
        ended,
        state,
        bool(verified),
        bool(final),
        exchanges,
        events,
        tuple(json.loads(tools)),
        int(denied or 0),  # NULL: a row from before the column, until the migration's re-read reaches it
    )
