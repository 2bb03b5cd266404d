"""The session index: SQLite beside the store, so listing never scans the store per request.

The store stays the source of truth. ``refresh`` finds sessions with new manifests since the last look and
re-reads only those (file store: one directory listing, one stat per session still growing; S3: a listing of
the date prefixes from the watermark day on). ``reindex`` drops everything and reads the whole store again;
an incrementally kept index equals a fresh one (tested).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.audit.summary import SessionRow, row_from_db, summarize
from extproc.recording.replay import load_session
from extproc.recording.store import Store
from extproc.recording.store.file import MANIFESTS, FileStore

log = logging.getLogger(__name__)

STATES = ("complete", "incomplete", "open")
MAX_LIMIT = 500
WATERMARK_STEP = 3600.0  # seconds between watermark writes while nothing changes
MAX_CURSOR = 512  # a cursor names a time and a key (at most 128 characters): ~220 characters in base64
_COLUMNS = (
    "key, id, server, owner_issuer, owner_subject, user, started, ended, state, verified, final, exchanges, "
    "events, tools, denied"
)
_MARKS = ",".join("?" * 16)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY, id TEXT, server TEXT, owner_issuer TEXT, owner_subject TEXT, user TEXT,
    started REAL, ended REAL, state TEXT, verified INTEGER, final INTEGER, exchanges INTEGER, events INTEGER,
    tools TEXT, denied INTEGER, mark TEXT
);
CREATE TABLE IF NOT EXISTS session_tools (key TEXT, tool TEXT, PRIMARY KEY (tool, key)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tools_by_key ON session_tools (key);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);
CREATE INDEX IF NOT EXISTS by_time ON sessions (started DESC, key DESC);
CREATE INDEX IF NOT EXISTS by_server ON sessions (server, started DESC, key DESC);
CREATE INDEX IF NOT EXISTS by_user ON sessions (user, started DESC, key DESC);
CREATE INDEX IF NOT EXISTS by_state ON sessions (state, started DESC, key DESC);
CREATE INDEX IF NOT EXISTS by_owner ON sessions (owner_subject, started DESC, key DESC);
"""
SCHEMA_VERSION = 1  # PRAGMA user_version; _migrate brings an older index up to it


def _migrate(db: sqlite3.Connection) -> None:
    """Bring an index written by an older version up to ``SCHEMA_VERSION`` in place; it keeps answering meanwhile.

    1: ``denied`` (refused exchanges per session). Old rows get NULL (read as 0) and their marks are cleared, with
    the watermark, so the next refresh re-reads every session from the store and fills the column in."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version >= SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    columns = {r[1] for r in db.execute("PRAGMA table_info(sessions)")}
    if "denied" not in columns:
        db.execute("ALTER TABLE sessions ADD COLUMN denied INTEGER")
        db.execute("UPDATE sessions SET mark = ''")
        db.execute("DELETE FROM meta WHERE name = 'watermark'")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.execute("COMMIT")


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
    """SQLite index of a store. Safe to call from several threads (one connection, one lock)."""

    def __init__(self, path: Path | str, store: Store, public_key: Ed25519PublicKey | None = None) -> None:
        self.path = Path(path)
        self.store = store
        self.public_key = public_key
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA journal_size_limit={1 << 20}")  # a checkpointed WAL shrinks back to 1 MB
        self._db.executescript(_SCHEMA)
        _migrate(self._db)
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- keeping it current ------------------------------------------------------------------------------------

    def refresh(self) -> int:
        """Re-read the sessions that changed since the last refresh; returns how many."""
        with self._refreshing:
            with self._lock:
                marks = dict(self._db.execute("SELECT key, mark FROM sessions").fetchall())
                watermark = self._db.execute("SELECT value FROM meta WHERE name = 'watermark'").fetchone()
            started = time.time()
            old = float(watermark[0]) if watermark else 0.0
            changed = self._changes(marks, old)
            n = self._update(changed)
            # Idle rounds write nothing: a watermark rewritten every round grew the WAL by a page per round. It
            # only narrows the S3 listing to recent days (by the day), so moving it hourly is as good.
            if n or started - old >= WATERMARK_STEP:
                with self._lock:
                    self._db.execute("INSERT OR REPLACE INTO meta VALUES ('watermark', ?)", (str(started),))
            return n

    def reindex(self) -> int:
        """Forget everything and index the whole store again."""
        with self._refreshing:
            with self._lock:
                self._db.executescript("DELETE FROM sessions; DELETE FROM session_tools; DELETE FROM meta;")
        return self.refresh()

    def _update(self, changed: dict[str, str]) -> int:
        done = 0
        batch: list[tuple[SessionRow, str]] = []
        for key, mark in changed.items():
            try:
                row = summarize(key, load_session(self.store, key, self.public_key))
            except KeyError:
                continue  # listed but nothing readable yet (a segment still being stored)
            except Exception:  # one unreadable session must not stop the index for the others
                log.exception("cannot index session %s", key)
                continue
            batch.append((row, ("F" if row.final else "") + mark))  # F: final, skipped until its folder changes
            done += 1
            if len(batch) >= 500:
                self.put_many(batch)
                batch = []
        self.put_many(batch)
        return done

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
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany(f"INSERT OR REPLACE INTO sessions ({_COLUMNS}, mark) VALUES ({_MARKS})", values)
            self._db.executemany("DELETE FROM session_tools WHERE key = ?", keys)
            self._db.executemany("INSERT INTO session_tools VALUES (?, ?)", tools)
            self._db.execute("COMMIT")

    def _changes(self, marks: dict[str, str], watermark: float) -> dict[str, str]:
        if isinstance(self.store, FileStore):
            return _file_changes(self.store.root, marks)
        from extproc.recording.store.s3 import S3Store

        if isinstance(self.store, S3Store):
            return _s3_changes(self.store, marks, watermark)
        return {k: "" for k in self.store.list_sessions()}  # an unknown backend: read everything

    # --- reading -----------------------------------------------------------------------------------------------

    def get(self, key: str) -> SessionRow | None:
        with self._lock:
            r = self._db.execute(f"SELECT {_COLUMNS} FROM sessions WHERE key = ?", (key,)).fetchone()
        return row_from_db(r) if r else None

    def count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM sessions").fetchone()[0])

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
            f"WHERE {' AND '.join(where)} ORDER BY s.started DESC, s.key DESC LIMIT ?"
        )
        with self._lock:
            rows = [row_from_db(r) for r in self._db.execute(sql, [*args, limit + 1]).fetchall()]
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
        parts.append("(" + (" AND ".join(terms) or "1") + ")")
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


def _file_changes(root: Path, marks: dict[str, str]) -> dict[str, str]:
    """Sessions whose manifests changed. A session whose streams are all final is skipped unless its folder
    changed (a new stream is a new file); a growing one costs one stat per manifest file."""
    out: dict[str, str] = {}
    if not root.is_dir():
        return out
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir(follow_symlinks=False):
                continue
            folder_mtime = entry.stat(follow_symlinks=False).st_mtime_ns
            old = marks.get(entry.name)
            if old is not None and old.startswith(f"F{folder_mtime}:"):
                continue  # final and no new stream since
            sizes = []
            with os.scandir(entry.path) as files:
                for f in files:
                    if f.name.endswith(MANIFESTS):
                        sizes.append(f"{f.name}={f.stat(follow_symlinks=False).st_size}")
            if not sizes:
                continue
            mark = f"{folder_mtime}:{';'.join(sorted(sizes))}"
            if old is None or old.lstrip("F") != mark:
                out[entry.name] = mark
    return out


def _s3_changes(store: Any, marks: dict[str, str], watermark: float) -> dict[str, str]:
    """Sessions with manifests under the date prefixes from the day before the watermark on (late uploads of
    older segments are found by ``reindex``)."""
    root = f"{store.prefix}/" if store.prefix else ""
    first_day = time.strftime("%Y/%m/%d", time.gmtime(max(0.0, watermark - 86_400))) if watermark else ""
    seen: dict[str, list[str]] = {}
    for day in store._days():
        if day.removeprefix(root).rstrip("/") < first_day:
            continue
        for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=day):
            for obj in page.get("Contents", []):
                rest = obj["Key"].removeprefix(day)
                if rest.endswith(".manifest.json"):
                    seen.setdefault(rest.split("/", 1)[0], []).append(f"{rest}@{obj.get('ETag', '')}")
    out = {}
    for key, names in seen.items():
        mark = hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:24]
        if marks.get(key, "").lstrip("F") != mark:
            out[key] = mark
    return out
