"""The session index: incremental updates equal a fresh reindex; filters, grants and cursors."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import session_segments

from extproc.audit.index import BadQuery, Filters, Grant, SessionIndex, decode_cursor
from extproc.recording.store.file import FileStore


async def _put(store: FileStore, key: str, **kw: object) -> None:
    for seg in session_segments(key, **kw):  # type: ignore[arg-type]
        await store.put_segment(seg)


def _dump(index: SessionIndex) -> list[tuple]:
    with index._lock:
        return index._db.execute("SELECT * FROM sessions ORDER BY key").fetchall()


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


@pytest.mark.parametrize(("problems", "verified"), [([], True), (["w: line 2: hash chain broken"], False)])
def test_the_index_row_of_a_session_that_fails_verification_is_not_verified(problems: list, verified: bool) -> None:
    from extproc.audit.summary import summarize
    from extproc.recording.replay import Session
    from extproc.recording.verify import Problem

    session = Session(id="s", events=[{"type": "exchange.start", "exchange": "e", "time": 1.0, "server": "alpha"}])
    session.problems = [Problem("w", 2, p) for p in problems]
    assert summarize("s", session).verified is verified
