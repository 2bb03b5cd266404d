"""Audit session index: a synthetic file store of 100,000 sessions; first page of filtered lists; incremental cost.

Run: python bench/audit_index_bench.py [--sessions N]. Builds the store under a temp dir (a few minutes for 100k).

PostgreSQL (issue 27): ``--postgres`` runs the same on a throwaway PostgreSQL 15 cluster started by the bench (or
``--postgres-url``) beside SQLite. ``--rows-only`` fills both indexes with N summarized rows directly (the rows a
reindex would write, without the minutes of building and reading a 100k store) to time the lists at N, and
``--reindex-sessions M`` times a reindex of an M-session store on both.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from synthetic import session_segments

from extproc.audit.index import Filters, Grant, SessionIndex
from extproc.audit.summary import SessionRow
from extproc.recording.store.file import FileStore

SERVERS = [f"server-{i}" for i in range(20)]
USERS = [f"user-{i}" for i in range(500)]
TOOLS = [f"tool-{i}" for i in range(50)]


def _store(root: Path, n: int) -> FileStore:
    """Written in the file store's layout directly (the store's own put fsyncs every segment: minutes for 100k)."""
    for i in range(n):
        tools = (TOOLS[i % 50], TOOLS[(i * 7) % 50])
        key = f"s{i:07d}"
        (seg,) = session_segments(key, server=SERVERS[i % 20], user=USERS[i % 500], started=1.7e9 + i * 10, tools=tools)
        folder = root / key
        folder.mkdir(parents=True)
        (folder / "w1.jsonl").write_bytes(seg.data)
        (folder / "w1.manifests").write_bytes(seg.manifest + b"\n")
    return FileStore(root)


def _ms(f) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    f()
    return (time.perf_counter() - t) * 1000


def _cases(n: int) -> dict[str, tuple[list[Grant], Filters]]:
    return {
        "all sessions (security)": ([Grant(None, True)], Filters()),
        "server filter": ([Grant(None, True)], Filters(server=SERVERS[3])),
        "user + time range": ([Grant(None, True)], Filters(user=USERS[3], since=1.7e9, until=1.7e9 + n * 5)),
        "tool filter": ([Grant(None, True)], Filters(tool=TOOLS[7])),
        "state=incomplete (no match)": ([Grant(None, True)], Filters(state="incomplete")),
        "grant: 2 servers, all": ([Grant(frozenset(SERVERS[:2]), True)], Filters()),
        "grant: own only": ([Grant(None, False)], Filters()),
    }


def _rows(n: int) -> list[tuple[SessionRow, str]]:
    """The rows a reindex of ``_store(n)`` writes (same servers, users, tools, times)."""
    out = []
    for i in range(n):
        tools = tuple(sorted({TOOLS[i % 50], TOOLS[(i * 7) % 50]}))
        t = 1.7e9 + i * 10
        row = SessionRow(
            f"s{i:07d}", f"s{i:07d}", SERVERS[i % 20], "https://issuer.test", USERS[i % 500], USERS[i % 500],
            t, t + 1, "complete", True, True, 2, 8, tools,
        )  # fmt: skip
        out.append((row, "F0:w1.manifests=1"))
    return out


def _lists(name: str, index: SessionIndex, n: int) -> None:
    who = ("https://issuer.test", USERS[3])
    for case, (grants, filters) in _cases(n).items():
        times = sorted(_ms(lambda g=grants, f=filters: index.query(g, who, f, None, 50)) for _ in range(20))
        print(f"{name:10s} first page (50) {case:30s} median {times[10]:6.2f} ms  max {times[-1]:6.2f} ms")


def postgres_main(n: int, reindex_n: int, url: str | None) -> None:
    """SQLite against PostgreSQL: lists at ``n`` rows, and a reindex of a ``reindex_n``-session store."""
    server = None
    if url is None:
        from postgres import PostgresServer

        server = PostgresServer().start()
        url = server.database()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            store = _store(root / "rec", reindex_n)
            for name, target in (("sqlite", root / "index.sqlite"), ("postgresql", url)):
                index = SessionIndex(target, store)
                t = time.perf_counter()
                index.reindex()
                took = time.perf_counter() - t
                per = took / reindex_n * 1e6
                print(f"{name:10s} reindex of {reindex_n} sessions: {took:.1f} s ({per:.0f} us/session)")
                index.reindex()  # drop everything again, then the rows at n
                rows = _rows(n)
                t = time.perf_counter()
                for k in range(0, n, 500):
                    index.put_many(rows[k : k + 500])
                took = time.perf_counter() - t
                print(f"{name:10s} {n} rows written in batches of 500: {took:.1f} s ({took / n * 1e6:.0f} us/row)")
                if name == "postgresql":
                    index.backend.write([("ANALYZE", [()])])
                _lists(name, index, n)
                index.close()
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--postgres", action="store_true", help="SQLite against PostgreSQL (a throwaway cluster)")
    ap.add_argument("--postgres-url", default=None, help="an empty PostgreSQL database to use instead")
    ap.add_argument("--reindex-sessions", type=int, default=5_000, help="store size for the reindex comparison")
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON (bench/goals.py reads it)")
    args = ap.parse_args()
    n = args.sessions
    if args.postgres or args.postgres_url:
        postgres_main(n, args.reindex_sessions, args.postgres_url)
        return
    figures: dict[str, float] = {"sessions": n}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        store = _store(root / "rec", n)
        print(f"store of {n} sessions written in {time.perf_counter() - t:.1f} s")
        index = SessionIndex(root / "index.sqlite", store)
        t = time.perf_counter()
        index.reindex()
        one = time.perf_counter() - t
        figures["reindex_s"] = round(one, 2)  # the default `audit reindex` (bench/goals.py's figure)
        print(f"reindex, one process: {one:.1f} s ({one / n * 1e6:.0f} us/session)")
        workers = os.cpu_count() or 1  # `audit reindex --workers <cores>`
        t = time.perf_counter()
        index.reindex(workers)
        figures["reindex_workers_s"] = round(time.perf_counter() - t, 2)
        print(
            f"reindex ({workers} processes, `audit reindex --workers {workers}`): {figures['reindex_workers_s']:.1f} s"
        )
        who = ("https://issuer.test", USERS[3])
        cases = {
            "all sessions (security)": ([Grant(None, True)], Filters()),
            "server filter": ([Grant(None, True)], Filters(server=SERVERS[3])),
            "user + time range": ([Grant(None, True)], Filters(user=USERS[3], since=1.7e9, until=1.7e9 + n * 5)),
            "tool filter": ([Grant(None, True)], Filters(tool=TOOLS[7])),
            "state=incomplete (no match)": ([Grant(None, True)], Filters(state="incomplete")),
            "grant: 2 servers, all": ([Grant(frozenset(SERVERS[:2]), True)], Filters()),
            "grant: own only": ([Grant(None, False)], Filters()),
        }
        for name, (grants, filters) in cases.items():
            times = sorted(_ms(lambda g=grants, f=filters: index.query(g, who, f, None, 50)) for _ in range(20))
            print(f"first page (50) {name:32s} median {times[10]:6.2f} ms  max {times[-1]:6.2f} ms")
        # Incremental: one refresh with nothing new, then with k new segments.
        figures["refresh_nothing_new_ms"] = round(_ms(index.refresh))
        print(f"refresh, nothing new: {figures['refresh_nothing_new_ms']:.0f} ms (one scan of {n} session folders)")
        k = 100

        async def add() -> None:
            for i in range(k):
                for seg in session_segments(f"new{i:04d}", server=SERVERS[0], user=USERS[0], started=1.8e9 + i):
                    await store.put_segment(seg)

        asyncio.run(add())
        ms = _ms(index.refresh)
        empty = _ms(index.refresh)
        print(f"refresh with {k} new segments: {ms:.0f} ms; per new segment {(ms - empty) / k:.2f} ms over the scan")
        figures["refresh_new_segment_ms"] = round((ms - empty) / k, 2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
