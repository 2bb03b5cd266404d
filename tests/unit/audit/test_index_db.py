"""The session index on PostgreSQL (Debian's server, started by the tests): the same rows and pages as SQLite,
versioned migrations applied once, one indexer elected by an advisory lock that fails over when its holder dies,
and logouts shared by the replicas."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest
from synthetic import session_segments

from extproc.audit.index import Filters, Grant, SessionIndex
from extproc.audit.index_db import PG_VERSION, PostgresBackend
from extproc.launcher import wait_until
from extproc.recording.store.file import FileStore


async def _store(root: Path) -> FileStore:
    store = FileStore(root)
    for i in range(12):
        for seg in session_segments(
            f"s{i:02d}", server="alpha" if i % 2 else "beta", user="bob" if i < 6 else "carol",
            started=1000.0 + i // 2, tools=(f"tool{i % 3}", "echo"), final=i != 4,
        ):  # fmt: skip
            await store.put_segment(seg)
    return store


def _pages(index: SessionIndex, grants: list[Grant], limit: int = 5, **f: object) -> list[list[str]]:
    out, cursor = [], None
    while True:
        rows, cursor = index.query(grants, ("https://issuer.test", "carol"), Filters(**f), cursor, limit)  # type: ignore[arg-type]
        out.append([r.key for r in rows])
        if cursor is None:
            return out


async def test_postgres_holds_the_same_rows_and_answers_the_same_pages_as_sqlite(
    tmp_path: Path, postgres_url: str
) -> None:
    store = await _store(tmp_path / "rec")
    lite, pg = SessionIndex(tmp_path / "i.sqlite", store), SessionIndex(postgres_url, store)
    try:
        assert lite.refresh() == pg.refresh() == 12
        assert pg.refresh() == 0  # nothing new: nothing re-read
        assert pg.dump() == lite.dump()
        everything = [Grant(None, True)]
        cases: list[tuple[list[Grant], dict[str, object]]] = [
            (everything, {}),  # equal start times: the key breaks the tie, bytewise on both
            ([], {}),
            ([Grant(frozenset({"alpha"}), True)], {}),
            ([Grant(None, False)], {}),
            (everything, {"server": "beta", "user": "bob"}),
            (everything, {"tool": "tool0"}),
            (everything, {"since": 1002.0, "until": 1004.0}),
            (everything, {"state": "open"}),
        ]
        for grants, f in cases:
            assert _pages(pg, grants, **f) == _pages(lite, grants, **f), (grants, f)
        assert _pages(pg, everything)[0] == ["s11", "s10", "s09", "s08", "s07"]
        assert pg.reindex() == 12 and pg.dump() == lite.dump()
    finally:
        lite.close()
        pg.close()


def test_migrations_are_versioned_and_applied_once(postgres_url: str) -> None:
    PostgresBackend(postgres_url).close()
    PostgresBackend(postgres_url).close()  # a second replica starting: nothing applied again
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT version FROM index_schema").fetchall() == [(PG_VERSION,)]
        db.execute("INSERT INTO index_schema VALUES (%s)", (PG_VERSION + 1,))
    with pytest.raises(RuntimeError, match=f"schema version {PG_VERSION + 1}, newer"):
        PostgresBackend(postgres_url)


_HOLDER = """
import sys
from extproc.audit.index_db import PostgresBackend
b = PostgresBackend(sys.argv[1])
print("leads" if b.leads() else "follows", flush=True)
sys.stdin.read()
"""


def test_one_replica_indexes_and_another_takes_over_when_it_is_killed(postgres_url: str) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_HOLDER), postgres_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    other = PostgresBackend(postgres_url)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "leads"
        assert not other.leads() and not other.leads()  # the holder is alive: this replica only reads
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        wait_until(other.leads, 10, "the surviving replica to take the indexer's lock", 0.05)
        assert other.leads()  # and keeps it
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.stdout.close()
        other.close()


async def test_a_logout_on_one_replica_is_seen_by_the_other(tmp_path: Path, postgres_url: str) -> None:
    store = FileStore(tmp_path / "rec")
    one, two = SessionIndex(postgres_url, store), SessionIndex(postgres_url, store)
    try:
        assert not two.login_revoked("login-1")
        one.revoke_login("login-1", until=2e9)
        one.revoke_login("login-1", until=2e9)  # logging out twice is fine
        one.revoke_login("old", until=1.0)
        assert two.login_revoked("login-1") and not two.login_revoked("login-2")
        one.revoke_login("login-3", until=2e9)  # and expired revocations leave with the next one
        assert two.backend.read("SELECT id FROM revoked_logins ORDER BY id") == [("login-1",), ("login-3",)]
    finally:
        one.close()
        two.close()
