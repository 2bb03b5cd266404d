"""The session index: incremental updates equal a fresh reindex; filters, grants and cursors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from synthetic import session_segments

from extproc.audit.index import BadQuery, Filters, Grant, SessionIndex, decode_cursor
from extproc.audit.index_db import SQLiteBackend
from extproc.recording.manifest import Signer, generate_keys
from extproc.recording.store.file import FileStore


async def _put(store: FileStore, key: str, **kw: object) -> None:
    for seg in session_segments(key, **kw):  # type: ignore[arg-type]
        await store.put_segment(seg)


def _sqlite(index: SessionIndex) -> sqlite3.Connection:
    assert isinstance(index.backend, SQLiteBackend)
    return index.backend.db


def _dump(index: SessionIndex) -> list[tuple]:
    return index.dump()


async def test_incremental_updates_equal_a_fresh_reindex(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "rec")
    inc = SessionIndex(tmp_path / "inc.sqlite", store)
    await _put(store, "s1", server="alpha", user="bob", started=100.0)
    assert inc.refresh() == 1
    assert inc.refresh() == 0  # nothing new: nothing re-read
    await _put(store, "s2", server="beta", user="carol", started=200.0, final=False)
    await _put(store, "s3", server="alpha", user="carol", started=300.0, tools=("add", "echo"))
    assert inc.refresh() == 2
    assert inc.get("s2").state == "open"  # type: ignore[union-attr]
    # A new stream in a finished session (e.g. the completer's marker) is picked up.
    for seg in session_segments("s1", server="alpha", user="bob", started=150.0, writer="w2"):
        await store.put_segment(seg)
    assert inc.refresh() == 1
    fresh = SessionIndex(tmp_path / "fresh.sqlite", store)
    assert fresh.reindex() == 3
    strip = [row[:-1] for row in _dump(inc)]  # all but the change mark
    assert strip == [row[:-1] for row in _dump(fresh)]
    assert inc.get("s1").events == 8  # type: ignore[union-attr]


async def test_a_reindex_by_several_processes_equals_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`audit reindex` reads a file store with one process per core: the same rows, the signatures checked with
    the key in each process, a broken session indexed as unverified there too."""
    monkeypatch.setattr("extproc.audit.index.PARALLEL_FROM", 1)
    monkeypatch.setattr("extproc.audit.index.BATCH", 3)  # several jobs per process
    key, _ = generate_keys(tmp_path / "keys")
    store, signer = FileStore(tmp_path / "rec"), Signer.from_file(key)
    for i in range(8):
        await _put(store, f"s{i}", server="alpha", user=f"u{i}", started=100.0 + i, signer=signer, tools=("a",))
    (tmp_path / "rec" / "s3" / "w1.jsonl").write_bytes(b"not a chain\n")
    one = SessionIndex(tmp_path / "one.sqlite", store, Signer.from_file(key).public)
    many = SessionIndex(tmp_path / "many.sqlite", store, Signer.from_file(key).public)
    assert one.reindex() == many.reindex(workers=2) == 8
    assert _dump(one) == _dump(many)
    rows = {k: many.get(k) for k in (f"s{i}" for i in range(8))}
    assert [k for k, r in rows.items() if r is None or not r.verified] == ["s3"]
    one.close(), many.close()


@pytest.fixture
async def index(tmp_path: Path) -> SessionIndex:
    store = FileStore(tmp_path / "rec")
    for i in range(10):
        server = "alpha" if i % 2 else "beta"
        user = "bob" if i < 5 else "carol"
        await _put(store, f"s{i:02d}", server=server, user=user, started=1000.0 + i, tools=(f"tool{i % 3}",))
    idx = SessionIndex(tmp_path / "i.sqlite", store)
    idx.refresh()
    return idx


def _page(index: SessionIndex, grants: list[Grant], who: str = "carol", limit: int = 3, **f: object) -> list[str]:
    out, cursor = [], None
    while True:
        rows, cursor = index.query(grants, ("https://issuer.test", who), Filters(**f), cursor, limit)  # type: ignore[arg-type]
        out += [r.key for r in rows]
        if cursor is None:
            return out


def test_grants_filters_and_cursor_pages(index: SessionIndex) -> None:
    everything = [Grant(None, True)]
    assert _page(index, everything) == [f"s{i:02d}" for i in range(9, -1, -1)]  # newest first, across pages
    assert _page(index, []) == []  # no viewer rule: nothing
    assert _page(index, [Grant(frozenset({"alpha"}), True)]) == ["s09", "s07", "s05", "s03", "s01"]
    assert _page(index, [Grant(None, False)], who="carol") == ["s09", "s08", "s07", "s06", "s05"]
    assert _page(index, [Grant(None, False)], who="mallory") == []
    assert _page(index, everything, server="beta", user="bob") == ["s04", "s02", "s00"]
    assert _page(index, everything, tool="tool0") == ["s09", "s06", "s03", "s00"]
    assert _page(index, everything, since=1003.0, until=1005.0) == ["s04", "s03"]
    assert _page(index, everything, state="open") == []


@pytest.mark.parametrize("cursor", ["", "!!", "bnVsbA", "WzEsMl0", "WyJ4IiwieSJd", "W3RydWUsIngiXQ"])
def test_cursors_not_issued_here_are_refused(cursor: str) -> None:
    with pytest.raises(BadQuery, match="cursor"):
        decode_cursor(cursor)


_V0_SCHEMA = """
CREATE TABLE sessions (
    key TEXT PRIMARY KEY, id TEXT, server TEXT, owner_issuer TEXT, owner_subject TEXT, user TEXT,
    started REAL, ended REAL, state TEXT, verified INTEGER, final INTEGER, exchanges INTEGER, events INTEGER,
    tools TEXT, mark TEXT
);
CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT);
"""


async def test_denied_counts_and_an_index_from_before_them_is_migrated(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "rec")
    await _put(store, "s1", server="alpha", user="bob", started=100.0, tools=("echo", "rm", "rm"), denied=("rm",))
    await _put(store, "s2", server="alpha", user="bob", started=200.0)
    # An index written before the denied column: its rows were current (their marks say so) and stay listed.
    old = SessionIndex(tmp_path / "new.sqlite", store)
    old.refresh()
    rows = _sqlite(old).execute("SELECT key, id, server, owner_issuer, owner_subject, user, started, ended, state, "
                                "verified, final, exchanges, events, tools, mark FROM sessions").fetchall()  # fmt: skip
    old.close()
    db = sqlite3.connect(tmp_path / "old.sqlite")
    db.executescript(_V0_SCHEMA)
    db.executemany(f"INSERT INTO sessions VALUES ({','.join('?' * 15)})", rows)
    db.execute("INSERT INTO meta VALUES ('watermark', ?)", (str(10**10),))
    db.commit()
    db.close()

    migrated = SessionIndex(tmp_path / "old.sqlite", store)
    assert migrated.get("s1").denied == 0  # type: ignore[union-attr]  # not known yet, still served
    assert migrated.refresh() == 2  # the migration made every session due for a re-read
    assert migrated.get("s1").denied == 2  # type: ignore[union-attr]
    assert migrated.get("s2").denied == 0  # type: ignore[union-attr]
    assert migrated.refresh() == 0
    migrated.close()
    assert SessionIndex(tmp_path / "old.sqlite", store).refresh() == 0  # migrated once, not at every start
    everything = [Grant(None, True)]
    rows_json = [r.to_json() for r in SessionIndex(tmp_path / "old.sqlite", store).query(
        everything, ("", ""), Filters(), None, 10)[0]]  # fmt: skip
    assert [(r["session"], r["denied"]) for r in rows_json] == [("s2", 0), ("s1", 2)]


async def test_an_idle_index_does_not_write(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "rec")
    await _put(store, "s1", server="alpha", user="bob", started=100.0)
    index = SessionIndex(tmp_path / "idx.sqlite", store)
    assert index.refresh() == 1
    wal = tmp_path / "idx.sqlite-wal"
    changes, size = _sqlite(index).total_changes, wal.stat().st_size
    for _ in range(50):  # fifty idle rounds: at the default interval, most of a minute of an idle service
        assert index.refresh() == 0
    assert _sqlite(index).total_changes == changes and wal.stat().st_size == size
    await _put(store, "s2", server="alpha", user="carol", started=200.0)
    assert index.refresh() == 1 and index.count() == 2  # a change is still seen, and written
    index.close()


@pytest.mark.parametrize(("problems", "verified"), [([], True), (["w: line 2: hash chain broken"], False)])
def test_the_index_row_of_a_session_that_fails_verification_is_not_verified(problems: list, verified: bool) -> None:
    from extproc.audit.summary import summarize
    from extproc.recording.replay import Session
    from extproc.recording.verify import Problem

    session = Session(id="s", events=[{"type": "exchange.start", "exchange": "e", "time": 1.0, "server": "alpha"}])
    session.problems = [Problem("w", 2, p) for p in problems]
    assert summarize("s", session).verified is verified


async def test_a_runs_neighbouring_windows_are_named_only_where_the_caller_may_see_them(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "rec")
    client, other = "0123456789abcdef", "fedcba9876543210"
    units = {f"r-{client}-{w:x}": u for w, u in ((0x100, "bob"), (0x200, "bob"), (0x500, "carol"), (0x600, "bob"))}
    units[f"r-{other}-300"] = "bob"  # another client's run, between them in time
    for key, user in units.items():
        await _put(store, key, server="alpha", user=user, started=100.0)
    index = SessionIndex(tmp_path / "i.sqlite", store)
    index.refresh()
    everyone, own = [Grant(None, True)], [Grant(None, False)]
    bob = ("https://issuer.test", "bob")

    assert index.run_windows(f"r-{client}-200", everyone, bob) == (f"r-{client}-100", f"r-{client}-500")
    assert index.run_windows(f"r-{client}-200", own, bob) == (f"r-{client}-100", f"r-{client}-600")  # not carol's
    assert index.run_windows(f"r-{client}-100", everyone, bob) == (None, f"r-{client}-200")
    assert index.run_windows(f"r-{other}-300", everyone, bob) == (None, None)
    assert index.run_windows("s01", everyone, bob) == (None, None)  # not a run
    index.close()
