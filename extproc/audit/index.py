"""The session index: SQLite beside the store (or PostgreSQL shared by replicas), so listing never scans the store.

The store stays the source of truth. ``refresh`` finds sessions with new manifests since the last look and
re-reads only those (file store: one directory listing, one stat per session still growing; S3: a listing of
the date prefixes from the watermark day on, plus each writer's digests since the last one seen, which name
segments uploaded late under an older date). ``reindex`` drops everything and reads the whole store again;
an incrementally kept index equals a fresh one (tested). Rows live in an ``index_db`` backend; with several
replicas on one PostgreSQL only the holder of the indexer's lock refreshes (``leads``), the others read.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import multiprocessing
import re
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.audit.changes import file_changes, s3_changes, s3_late_changes, summarize_files, summarize_sessions
from extproc.audit.index_db import IndexBackend, open_backend
from extproc.audit.summary import SessionRow, row_from_db
from extproc.recording.store import Store
from extproc.recording.store.file import FileStore
from extproc.recording.units import run_windows

log = logging.getLogger(__name__)

STATES = ("complete", "incomplete", "open")
MAX_LIMIT = 500
WATERMARK_STEP = 3600.0  # seconds between watermark writes while nothing changes
BATCH = 500  # sessions per transaction (and per job of a worker process)
PARALLEL_FROM = 2_000  # changed sessions from which a file store is read by one process per core
MAX_WORKERS = 8
MAX_CURSOR = 512  # a cursor names a time and a key (at most 128 characters): ~220 characters in base64
_COLUMNS = (
    'key, id, server, owner_issuer, owner_subject, "user", started, ended, state, verified, final, exchanges, '
    "events, tools, denied"
)
_MARKS = ",".join("?" * 16)
_UPSERT = f"INSERT INTO sessions ({_COLUMNS}, mark) VALUES ({_MARKS}) ON CONFLICT (key) DO UPDATE SET " + ", ".join(
    f"{c.strip()} = excluded.{c.strip()}" for c in [*_COLUMNS.split(",")[1:], "mark"]
)
_RUN_CLIENT = re.compile(r"r-([0-9a-f]{16})-[0-9a-f]+")  # a stateless run's window unit (recording/units.py)
_SET_META = "INSERT INTO meta VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value"


class BadQuery(ValueError):
    """A filter or cursor the API refuses with 400; the message says which and why."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What one matching viewer rule allows: servers (None = all) and everyone's sessions or only one's own."""

    servers: frozenset[str] | None
    all_sessions: bool


@dataclass(frozen=True, slots=True)
class Filters:
    server: str | None = None
    user: str | None = None
    since: float | None = None
    until: float | None = None
    state: str | None = None
    tool: str | None = None


def encode_cursor(row: SessionRow) -> str:
    return base64.urlsafe_b64encode(json.dumps([row.started, row.key]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    if not cursor or len(cursor) > MAX_CURSOR:
        raise BadQuery("cursor is not one this service issued (copy next_cursor from the previous page)")
    try:
        doc = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, binascii.Error, RecursionError):  # RecursionError: thousands of nested brackets
        raise BadQuery("cursor is not one this service issued (copy next_cursor from the previous page)") from None
    if (
        not isinstance(doc, list)
        or len(doc) != 2
        or not isinstance(doc[0], int | float)
        or isinstance(doc[0], bool)
        or not math.isfinite(doc[0])
        or not isinstance(doc[1], str)
    ):
        raise BadQuery("cursor is not one this service issued (copy next_cursor from the previous page)")
    return float(doc[0]), doc[1]


class SessionIndex:
    """The index of a store, in SQLite or PostgreSQL (``index_db``). Safe to call from several threads."""

    def __init__(self, target: Path | str, store: Store, public_key: Ed25519PublicKey | None = None) -> None:
        self.target = target
        self.store = store
        self.public_key = public_key
        self.backend: IndexBackend = open_backend(target)
        self._refreshing = threading.Lock()

    def close(self) -> None:
        self.backend.close()

    def leads(self) -> bool:
        """Whether this replica refreshes the index: always on SQLite, the advisory lock's holder on PostgreSQL."""
        return self.backend.leads()

    # --- keeping it current ------------------------------------------------------------------------------------

    def refresh(self) -> int:
        """Re-read the sessions that changed since the last refresh; returns how many."""
        with self._refreshing:
            return self._refresh(1)

    def _refresh(self, workers: int) -> int:
        """One refresh, the lock held by the caller."""
        marks: dict[str, str] = dict(self.backend.read("SELECT key, mark FROM sessions"))
        meta: dict[str, str] = dict(self.backend.read("SELECT name, value FROM meta"))
        watermark = meta.get("watermark")
        started = time.time()
        old = float(watermark) if watermark else 0.0
        changed, seen = self._changes(marks, old, meta)
        n = self._update(changed, workers)
        # Idle rounds write nothing: a watermark rewritten every round grew the WAL by a page per round. It
        # only narrows the S3 listing to recent days (by the day), so moving it hourly is as good.
        if n or started - old >= WATERMARK_STEP:
            seen["watermark"] = str(started)
        if seen:
            self.backend.write([(_SET_META, list(seen.items()))])
        return n

    def reindex(self, workers: int = 1) -> int:
        """Forget everything and index the whole store again; a file store's sessions read by ``workers``
        processes (``audit reindex --workers``; the service's background refresh stays on one)."""
        with self._refreshing:
            self.backend.write([(f"DELETE FROM {t}", [()]) for t in ("sessions", "session_tools", "meta")])
            return self._refresh(workers)

    def _update(self, changed: dict[str, str], workers: int = 1) -> int:
        done = 0
        for batch in self._summaries(changed, workers):
            self.put_many(batch)
            done += len(batch)
        return done

    def _summaries(self, changed: dict[str, str], workers: int) -> Iterator[list[tuple[SessionRow, str]]]:
        """Rows of the changed sessions, in batches of ``BATCH``. With ``workers`` > 1, many sessions of a file
        store are read and checked by that many processes: reading is CPU-bound (the hash chains), and one thread
        leaves the other cores idle for the half minute a 100,000-session store takes."""
        items = list(changed.items())
        workers = min(workers, MAX_WORKERS)
        if isinstance(self.store, FileStore) and workers > 1 and len(items) >= PARALLEL_FROM:
            key = self.public_key.public_bytes_raw() if self.public_key is not None else None
            chunks = [items[i : i + BATCH] for i in range(0, len(items), BATCH)]
            # spawn: the audit service calls this from a thread; a forked copy of a threaded process can deadlock
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                yield from pool.map(summarize_files, [(self.store.root, key, c) for c in chunks])
            return
        for i in range(0, len(items), BATCH):
            yield summarize_sessions(self.store, self.public_key, items[i : i + BATCH])

    def put(self, row: SessionRow, mark: str) -> None:
        self.put_many([(row, mark)])

    def put_many(self, rows: list[tuple[SessionRow, str]]) -> None:
        """Write rows in one transaction (one commit per batch, not per session)."""
        if not rows:
            return
        values = [
            (
                r.key, r.id, r.server, r.owner_issuer, r.owner_subject, r.user, r.started, r.ended, r.state,
                int(r.verified), int(r.final), r.exchanges, r.events, json.dumps(r.tools), r.denied, mark,
            )
            for r, mark in rows
        ]  # fmt: skip
        keys = [(r.key,) for r, _ in rows]
        tools = [(r.key, t) for r, _ in rows for t in r.tools]
        self.backend.write(
            [
                (_UPSERT, values),
                ("DELETE FROM session_tools WHERE key = ?", keys),
                ("INSERT INTO session_tools VALUES (?, ?)", tools),
            ]
        )

    def _changes(
        self, marks: dict[str, str], watermark: float, meta: dict[str, str]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Sessions to re-read (key -> new mark), and meta entries to keep (what was seen up to where)."""
        if isinstance(self.store, FileStore):
            return file_changes(self.store.root, marks), {}
        from extproc.recording.store.s3 import S3Store

        if isinstance(self.store, S3Store):
            changed = s3_changes(self.store, marks, watermark)
            late, seen = s3_late_changes(self.store, meta)
            for key in late:
                changed.setdefault(key, "late")  # its next date listing (if ever) re-reads it once more: harmless
            return changed, seen
        return {k: "" for k in self.store.list_sessions()}, {}  # an unknown backend: read everything

    # --- reading -----------------------------------------------------------------------------------------------

    def get(self, key: str) -> SessionRow | None:
        rows = self.backend.read(f"SELECT {_COLUMNS} FROM sessions WHERE key = ?", (key,))
        return row_from_db(rows[0]) if rows else None

    def count(self) -> int:
        return int(self.backend.read("SELECT count(*) FROM sessions")[0][0])

    def dump(self) -> list[tuple[Any, ...]]:
        """Every row with its change mark, by key (tests compare indexes with it)."""
        return self.backend.read(f"SELECT {_COLUMNS}, mark FROM sessions ORDER BY key")

    # --- logouts of the web viewer (shared by the replicas that share the index) ------------------------------

    def revoke_login(self, login_id: str, until: float) -> None:
        """Refuse the sealed login ``login_id`` from now until it expires anyway (expired ones are dropped)."""
        self.backend.write(
            [
                ("DELETE FROM revoked_logins WHERE until < ?", [(time.time(),)]),
                ("INSERT INTO revoked_logins VALUES (?, ?) ON CONFLICT (id) DO NOTHING", [(login_id, until)]),
            ]
        )

    def run_windows(self, key: str, grants: list[Grant], who: tuple[str, str]) -> tuple[str | None, str | None]:
        """A stateless run's units of the same client in the nearest earlier and later windows that this caller
        may see (``recording/units.py``: a client busy across a window boundary continues in the next one)."""
        client = _RUN_CLIENT.fullmatch(key)
        if client is None:
            return None, None
        prefix = f"r-{client[1]}-"  # 16 hex digits: nothing LIKE would read as a wildcard
        rows = [
            row_from_db(r)
            for r in self.backend.read(f"SELECT {_COLUMNS} FROM sessions WHERE key LIKE ?", (prefix + "%",))
        ]
        keys = [r.key for r in rows if r.key == key or allowed(grants, who, r)]
        return run_windows(keys, key)

    def login_revoked(self, login_id: str) -> bool:
        return bool(self.backend.read("SELECT 1 FROM revoked_logins WHERE id = ?", (login_id,)))

    def query(
        self, grants: Iterable[Grant], who: tuple[str, str], filters: Filters, cursor: str | None, limit: int
    ) -> tuple[list[SessionRow], str | None]:
        """One page of the sessions ``grants`` allow, newest first; the cursor of the next page or None."""
        grant_sql, args = _grant_clause(list(grants), who)
        if grant_sql is None:
            return [], None  # no matching viewer rule: no access
        where = [grant_sql]
        for column, value in (("server", filters.server), ("user", filters.user), ("state", filters.state)):
            if value is not None:
                where.append(f"s.{column} = ?")
                args.append(value)
        if filters.since is not None:
            where.append("s.started >= ?")
            args.append(filters.since)
        if filters.until is not None:
            where.append("s.started < ?")
            args.append(filters.until)
        if filters.tool is not None:
            where.append("s.key IN (SELECT key FROM session_tools WHERE tool = ?)")
            args.append(filters.tool)
        if cursor is not None:
            started, key = decode_cursor(cursor)
            where.append("(s.started < ? OR (s.started = ? AND s.key < ?))")
            args += [started, started, key]
        sql = (
            f"SELECT {', '.join('s.' + c.strip() for c in _COLUMNS.split(','))} FROM sessions s "
            f"WHERE {' AND '.join(where)} ORDER BY s.started DESC, s.key DESC LIMIT {int(limit) + 1}"
        )
        # LIMIT as a literal, not a parameter: PostgreSQL's generic plan for a prepared statement (psycopg prepares
        # after 5 runs) cannot see a small LIMIT and sorted the whole table (55 ms at 100k rows, 0.1 ms with it).
        rows = [row_from_db(r) for r in self.backend.read(sql, args)]
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1]) if more and rows else None


def _grant_clause(grants: list[Grant], who: tuple[str, str]) -> tuple[str | None, list[Any]]:
    """SQL for "some grant allows this row"; None when there is no grant at all."""
    parts: list[str] = []
    args: list[Any] = []
    for g in grants:
        terms = []
        if g.servers is not None:
            terms.append(f"s.server IN ({','.join('?' * len(g.servers))})")
            args += sorted(g.servers)
        if not g.all_sessions:
            terms.append("(s.owner_issuer = ? AND s.owner_subject = ? AND s.owner_subject != '')")
            args += list(who)
        parts.append("(" + (" AND ".join(terms) or "TRUE") + ")")
    if not parts:
        return None, []
    return "(" + " OR ".join(parts) + ")", args


def allowed(grants: Iterable[Grant], who: tuple[str, str], row: SessionRow) -> bool:
    """The same test as ``_grant_clause``, for one row in Python."""
    return any(
        (g.servers is None or row.server in g.servers)
        and (g.all_sessions or (row.owner_subject != "" and (row.owner_issuer, row.owner_subject) == who))
        for g in grants
    )
