"""`sessions list/show/verify --api URL`: the same commands through the audit API, as a remote auditor works.

The token comes from ``--token`` or ``MCP_EXTPROC_TOKEN``; every call is on the audit trail like any other.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
from rich.console import Console

from extproc.authn.session_binding import server_id_of
from extproc.recording.chain import Problem
from extproc.recording.replay import Session
from extproc.recording.report import print_session, sessions_table
from extproc.recording.store import safe_key
from extproc.reserved import parse_server_unit


class RemoteError(Exception):
    """The API refused or could not be reached; the message says why."""


class AuditApi:
    def __init__(self, base: str, token: str | None) -> None:
        self.base = base.rstrip("/") + "/api/"
        self.http = httpx.Client(headers={"authorization": f"Bearer {token}"} if token else {}, timeout=60)

    def get(self, path: str, **params: str) -> httpx.Response:
        try:
            r = self.http.get(self.base + path, params=params)
        except httpx.HTTPError as e:
            raise RemoteError(f"cannot reach {self.base}: {e}") from None
        if r.status_code != 200:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:200]
            raise RemoteError(f"{r.status_code}: {message}")
        return r

    def fetch(self, session_id: str, suffix: str = "") -> tuple[str, httpx.Response]:
        """A session's resource; a client-held (gateway-bound) id is tried as the server's id after a 404."""
        ids = list(dict.fromkeys([session_id, server_id_of(session_id) or session_id]))
        for key in dict.fromkeys(safe_key(i) for i in ids):
            try:
                return f"sessions/{key}", self.get(f"sessions/{key}{suffix}")
            except RemoteError as e:
                if not str(e).startswith("404"):
                    raise
        # A server's id is recorded under its server's unit (u_<server>_<backend>_<id>): one listed unit, or none.
        units = [r["session"] for r in self.rows() if (u := parse_server_unit(r["session"])) and u[2] in ids]
        if len(units) == 1:
            return f"sessions/{units[0]}", self.get(f"sessions/{units[0]}{suffix}")
        raise RemoteError("404: no such session")

    def rows(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            doc = self.get("sessions", limit="500", **({"cursor": cursor} if cursor else {})).json()
            # the same row as a local `sessions list`: whether `verified` includes signatures is said per row
            out += [{**row, "signatures_checked": bool(doc.get("signatures_checked"))} for row in doc["sessions"]]
            cursor = doc["next_cursor"]
            if cursor is None:
                return sorted(out, key=lambda r: r["started"] or 0)


def remote_list(console: Console, api: AuditApi, json_out: bool) -> None:
    rows = api.rows()
    if json_out:
        print(json.dumps(rows, indent=2))
    else:
        console.print(sessions_table(rows))


def remote_show(console: Console, api: AuditApi, session_id: str, json_out: bool) -> None:
    path, shown = api.fetch(session_id)
    if json_out:
        print(json.dumps(shown.json(), indent=2, ensure_ascii=False))
        return
    events = [json.loads(line) for line in api.get(path + "/events").text.splitlines() if line]
    for ev in events:
        ev["_writer"] = ev.pop("writer", "")
    verify = api.get(path + "/verify").json()
    session = Session(id=path.rsplit("/", 1)[-1], events=events, notes=verify["notes"])
    session.problems = [Problem("api", 0, p) for p in verify["problems"]]
    session.unfinished = verify["unfinished"]
    session.signatures_checked = bool(verify["signatures_checked"])  # as the service checked, as `verify` says
    print_session(console, session)


def remote_verify(console: Console, api: AuditApi, session_id: str, allow_open: bool) -> bool:
    doc = api.fetch(session_id, "/verify")[1].json()
    for note in doc["notes"]:
        console.print(f"[yellow]NOTE[/yellow] {note}", highlight=False)
    for why in doc["unfinished"]:
        console.print(f"[yellow]OPEN[/yellow] {why}" if allow_open else f"[red]FAIL[/red] {why}", highlight=False)
    for p in doc["problems"]:
        console.print(f"[red]FAIL[/red] {p}", highlight=False)
    if doc["problems"] or (doc["unfinished"] and not allow_open):
        return False
    signed = "signatures checked, " if doc["signatures_checked"] else ""
    console.print(
        f"OK: {doc['events']} events in {doc['streams']} stream(s), {signed}every chain and manifest intact "
        f"(checked by the audit service); state {doc['state']}; capture {doc.get('capture') or '-'}"
    )
    return True
