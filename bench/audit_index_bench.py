"""Audit session index: a synthetic file store of 100,000 sessions; first page of filtered lists; incremental cost.

Run: python bench/audit_index_bench.py [--sessions N]. Builds the store under a temp dir (a few minutes for 100k).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from synthetic import session_segments

from extproc.audit.index import Filters, Grant, SessionIndex
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=None, help="also write the figures as JSON (bench/goals.py reads it)")
    args = ap.parse_args()
    n = args.sessions
    figures: dict[str, float] = {"sessions": n}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        store = _store(root / "rec", n)
        print(f"store of {n} sessions written in {time.perf_counter() - t:.1f} s")
        index = SessionIndex(root / "index.sqlite", store)
        t = time.perf_counter()
        index.reindex()
        figures["reindex_s"] = round(time.perf_counter() - t, 2)
        print(f"reindex: {time.perf_counter() - t:.1f} s ({(time.perf_counter() - t) / n * 1e6:.0f} us/session)")
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
