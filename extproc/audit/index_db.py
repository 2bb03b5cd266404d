"""Where the session index keeps its rows: SQLite beside the store (one machine, the default) or PostgreSQL shared
by several audit replicas (``audit.index: postgresql://…``).

The index speaks one SQL to both (``?`` placeholders, ``ON CONFLICT … DO UPDATE``, the ``"user"`` column quoted);
a backend only opens, migrates, runs statements in transactions, and says whether this replica is the one that
indexes. On PostgreSQL that is whoever holds a session-level advisory lock: the holder's connection ending (its
replica died, or was cut off) releases it and the next replica to try takes over within one refresh interval.
Schemas are versioned: SQLite in ``PRAGMA user_version``, PostgreSQL in ``index_schema``, each migration applied
once, in order, under a lock (so replicas starting together do not race).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

Rows = list[tuple[Any, ...]]
Step = tuple[str, Sequence[Sequence[Any]]]  # one statement and its parameter rows (run once per row)

# The indexer's advisory lock and the migration lock (two arbitrary 64-bit numbers; "mcp-idx1", "mcp-mig1").
LEADER_LOCK = 0x6D63702D69647831
MIGRATION_LOCK = 0x6D63702D6D696731


class IndexBackend(Protocol):
    """The four things the index needs from a database."""

    def read(self, sql: str, args: Sequence[Any] = ()) -> Rows: ...

    def write(self, steps: Sequence[Step]) -> None:
        """Every step in one transaction: all or nothing."""
        ...

    def leads(self) -> bool:
        """Whether this replica is the one that refreshes the index (the others only read it)."""
        ...

    def close(self) -> None: ...


def is_url(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def open_backend(target: str | Path) -> IndexBackend:
    """PostgreSQL for a ``postgresql://`` URL, else SQLite at the path."""
    if is_url(target):
        return PostgresBackend(str(target))
    return SQLiteBackend(Path(target))


# --- SQLite -----------------------------------------------------------------------------------------------------

_SQLITE_SCHEMA = """
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
CREATE TABLE IF NOT EXISTS revoked_logins (id TEXT PRIMARY KEY, until REAL);
"""
SQLITE_VERSION = 1  # PRAGMA user_version; _sqlite_migrate brings an older index up to it


def _sqlite_migrate(db: sqlite3.Connection) -> None:
    """Bring an index written by an older version up to ``SQLITE_VERSION`` in place; it keeps answering meanwhile.

    1: ``denied`` (refused exchanges per session). Old rows get NULL (read as 0) and their marks are cleared, with
    the watermark, so the next refresh re-reads every session from the store and fills the column in."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    if version >= SQLITE_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    columns = {r[1] for r in db.execute("PRAGMA table_info(sessions)")}
    if "denied" not in columns:
        db.execute("ALTER TABLE sessions ADD COLUMN denied INTEGER")
        db.execute("UPDATE sessions SET mark = ''")
        db.execute("DELETE FROM meta WHERE name = 'watermark'")
    db.execute(f"PRAGMA user_version = {SQLITE_VERSION}")
    db.execute("COMMIT")


class SQLiteBackend:
    """One file, one connection, one lock; every replica using the file indexes (SQLite serializes writers)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(f"PRAGMA journal_size_limit={1 << 20}")  # a checkpointed WAL shrinks back to 1 MB
        self.db.executescript(_SQLITE_SCHEMA)
        _sqlite_migrate(self.db)
        self.lock = threading.Lock()

    def read(self, sql: str, args: Sequence[Any] = ()) -> Rows:
        with self.lock:
            return self.db.execute(sql, args).fetchall()

    def write(self, steps: Sequence[Step]) -> None:
        with self.lock:
            self.db.execute("BEGIN")
            try:
                for sql, rows in steps:
                    self.db.executemany(sql, rows)
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def leads(self) -> bool:
        return True

    def close(self) -> None:
        with self.lock:
            self.db.close()


# --- PostgreSQL -------------------------------------------------------------------------------------------------

# Keys compare bytewise (COLLATE "C") as in SQLite, so pages and cursors come out the same on both.
_PG_MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
CREATE TABLE sessions (
    key TEXT COLLATE "C" PRIMARY KEY, id TEXT, server TEXT, owner_issuer TEXT, owner_subject TEXT, "user" TEXT,
    started DOUBLE PRECISION, ended DOUBLE PRECISION, state TEXT, verified INTEGER, final INTEGER,
    exchanges INTEGER, events INTEGER, tools TEXT, denied INTEGER, mark TEXT
);
CREATE TABLE session_tools (key TEXT COLLATE "C", tool TEXT, PRIMARY KEY (tool, key));
CREATE INDEX tools_by_key ON session_tools (key);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT);
CREATE INDEX by_time ON sessions (started DESC, key DESC);
CREATE INDEX by_server ON sessions (server, started DESC, key DESC);
CREATE INDEX by_user ON sessions ("user", started DESC, key DESC);
CREATE INDEX by_state ON sessions (state, started DESC, key DESC);
CREATE INDEX by_owner ON sessions (owner_subject, started DESC, key DESC);
CREATE TABLE revoked_logins (id TEXT PRIMARY KEY, until DOUBLE PRECISION);
""",
    ),
]
PG_VERSION = _PG_MIGRATIONS[-1][0]


def _pg(sql: str) -> str:
    """The index's ``?`` placeholders as psycopg's ``%s`` (no statement of the index has a literal ``?`` or ``%``)."""
    return sql.replace("?", "%s")


class PostgresBackend:
    """A PostgreSQL database shared by the audit replicas (psycopg 3). A dropped connection is opened again on the
    next call; the advisory lock that makes this replica the indexer lives on a connection of its own."""

    def __init__(self, url: str, connect_timeout: float = 3.0) -> None:
        import psycopg

        self._psycopg = psycopg
        self.url = url
        self.connect_timeout = connect_timeout
        self.lock = threading.Lock()
        self._conn: Any = None
        self._leader: Any = None
        self._holding = False
        try:
            self._migrate()
        except BaseException:
            self.close()
            raise

    def _connect(self) -> Any:
        # prepare_threshold=None: no server-side prepared statements. Their generic plans cannot see the filter's
        # value (state = $1 planned as "many rows": 44 ms for a state with no session at 100k rows, 0.2 ms planned
        # per call), and a PgBouncer in transaction mode between the replicas and the database refuses them.
        # application_name: an operator (and the failover test) sees which process holds the indexer's lock.
        return self._psycopg.connect(
            self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout)), prepare_threshold=None,
            application_name=f"mcp-extproc audit index pid {os.getpid()}",
        )  # fmt: skip

    def _db(self) -> Any:
        if self._conn is None or self._conn.closed or self._conn.broken:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._connect()
        return self._conn

    def _migrate(self) -> None:
        """Apply the migrations this database has not seen, in order, once (replicas starting together wait)."""
        with self.lock:
            db = self._db()
            with db.transaction():
                db.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                db.execute("CREATE TABLE IF NOT EXISTS index_schema (version INTEGER NOT NULL)")
                row = db.execute("SELECT max(version) FROM index_schema").fetchone()
                current = int(row[0]) if row and row[0] is not None else 0
                if current > PG_VERSION:
                    raise RuntimeError(
                        f"the session index in PostgreSQL is at schema version {current}, newer than this "
                        f"version of mcp-extproc knows ({PG_VERSION}); upgrade this replica"
                    )
                for version, ddl in _PG_MIGRATIONS:
                    if version > current:
                        db.execute(ddl)
                        db.execute("INSERT INTO index_schema VALUES (%s)", (version,))
                        log.info("session index: PostgreSQL schema migrated to version %d", version)

    def _run(self, fn: Any) -> Any:
        """``fn(connection)``; once more on a fresh connection when the old one was dropped (server restart)."""
        with self.lock:
            try:
                return fn(self._db())
            except self._psycopg.OperationalError:
                if self._conn is not None and not self._conn.broken:
                    raise
                log.warning("session index: PostgreSQL connection lost; reconnecting")
                self._conn = None
                return fn(self._db())

    def read(self, sql: str, args: Sequence[Any] = ()) -> Rows:
        return self._run(lambda db: db.execute(_pg(sql), args).fetchall())  # type: ignore[no-any-return]

    def write(self, steps: Sequence[Step]) -> None:
        def run(db: Any) -> None:
            with db.transaction(), db.cursor() as cur:
                for sql, rows in steps:
                    if rows:
                        cur.executemany(_pg(sql), rows)

        self._run(run)

    def leads(self) -> bool:
        """Try (again) for the indexer's lock; a lost connection has lost it, and the next call tries afresh."""
        try:
            if self._leader is None or self._leader.closed or self._leader.broken:
                if self._leader is not None:
                    self._leader.close()
                self._leader, self._holding = self._connect(), False
            if self._holding:
                self._leader.execute("SELECT 1")  # still connected: still held (a dropped one raises)
                return True
            row = self._leader.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
            self._holding = bool(row and row[0])
            if self._holding:
                log.info("session index: this replica is now the indexer")
            return self._holding
        except self._psycopg.Error as e:
            log.warning("session index: cannot take the indexer's lock: %s", e)
            if self._leader is not None:
                self._leader.close()
            self._leader, self._holding = None, False
            return False

    def close(self) -> None:
        with self.lock:
            for conn in (self._conn, self._leader):
                if conn is not None:
                    conn.close()
            self._conn = self._leader = None
            self._holding = False
