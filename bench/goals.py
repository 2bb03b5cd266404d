"""The hot path's goals (issue 28) in one run: each figure beside its goal, met or not (``make bench-goals``).

Runs the benchmarks that measure them, one after the other on this machine, each as it runs on its own, and reads
their JSON results:

- ``gateway_bench.py`` closed loop, all five rows: processor CPU per exchange B minus N, B/N (req/s);
- ``gateway_bench.py --rate-of-b 0.5``: latency B adds over N at half of B's capacity, JSON and SSE;
- ``gateway_bench.py --rate 10``: CPU per exchange at 10 req/s, B minus N;
- ``sse_bench.py``: a 10 MB and a 100 MB SSE response through B: MiB/s, CPU/MiB, RSS growth, every event verified;
- ``audit_index_bench.py``: ``audit reindex`` of 100,000 sessions, and the incremental refresh;
- ``gateway_bench.py --workers 2``: CPU per exchange and req/s with two processor workers;
- ``sustained_bench.py``: B held for minutes: refusals and the recorder's backlog;
- ``recorder_bench.py``'s ``run``: the recorder alone, against the most events/s the sustained run fed it.

    python bench/goals.py [--minutes 5] [--out bench/results/goals.json]

About 7 minutes plus ``--minutes``. Every figure depends on the machine and on what else runs on it: the table
names the machine and the load average at the start, and bench/README.md says how to read them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(BENCH))

import gateway_bench as gb  # noqa: E402
import recorder_bench  # noqa: E402

N, A, B0, B, ENVOY = gb.NOOP, gb.ENVOY, gb.ANONYMOUS, gb.AUTHED, gb.ENVOY


def run(script: str, out: Path, *args: str) -> dict[str, Any]:
    """Run one benchmark script as a process of its own (as ``make bench`` does) and read its JSON result."""
    command = [sys.executable, str(BENCH / script), *args, "--out", str(out)]
    print(f"\n$ {' '.join(command[1:])}", flush=True)
    subprocess.run(command, check=True)
    return dict(json.loads(out.read_text()))


def cpu(row: dict[str, Any]) -> float:
    return float(row["cpu_ms_per_request"]["processor"])


def goal(name: str, figure: str, target: str, met: bool | None) -> dict[str, Any]:
    return {"goal": name, "figure": figure, "target": target, "met": met}


def measure(minutes: float, workdir: Path, quick: bool = False) -> dict[str, Any]:
    """Issue 28's table (each goal relative to the no-op processor N measured in the same run), then the rows kept
    from earlier rounds (two workers, B held for minutes, the recorder alone)."""
    rows: list[dict[str, Any]] = []
    window = ("--seconds", "3") if quick else ()  # --quick: a smoke run of this script, not figures
    closed = run("gateway_bench.py", workdir / "closed.json", *window)["scenarios"]
    n, b = closed[N], closed[B]
    ours = cpu(b) - cpu(n)
    rows.append(
        goal(
            "processor CPU per exchange, B minus N (ours; closed loop)",
            f"{ours:.2f} ms (B {cpu(b):.2f} ms, N {cpu(n):.2f} ms; B0 {cpu(closed[B0]):.2f} ms)",
            "≤ 0.5 ms",
            ours <= 0.5,
        )
    )
    rows.append(
        goal(
            "B/N on req/s (closed loop, 16 connections)",
            f"x{b['rps'] / n['rps']:.2f} ({b['rps']:.0f} / {n['rps']:.0f} req/s); "
            f"B/A x{b['rps'] / closed[A]['rps']:.2f}, B0/N x{closed[B0]['rps'] / n['rps']:.2f}",
            "≥ x0.7",
            b["rps"] / n["rps"] >= 0.7,
        )
    )
    half = run(
        "gateway_bench.py", workdir / "half.json", "--rate-of-b", "0.5", "--scenarios", "envoy,noop,authed", *window
    )
    at = half["scenarios"]
    for kind in ("json", "sse"):
        over_n = {q: at[B]["by_kind"][kind][q] - at[N]["by_kind"][kind][q] for q in ("p50_ms", "p99_ms")}
        n50 = at[N]["by_kind"][kind]["p50_ms"] - at[ENVOY]["by_kind"][kind]["p50_ms"]
        rows.append(
            goal(
                f"latency added over N at half of B's capacity ({half['parameters']['rate']} req/s), {kind.upper()}",
                f"B p50 {over_n['p50_ms']:+.1f} ms, p99 {over_n['p99_ms']:+.1f} ms (N over Envoy alone: p50 "
                f"{n50:+.1f} ms)",
                "p50 ≤ +1 ms, p99 ≤ +5 ms",
                over_n["p50_ms"] <= 1 and over_n["p99_ms"] <= 5,
            )
        )
    slow = run("gateway_bench.py", workdir / "rate10.json", "--rate", "10", "--seconds", "5" if quick else "30",
               "--scenarios", "noop,authed")["scenarios"]  # fmt: skip
    extra = cpu(slow[B]) - cpu(slow[N])
    rows.append(
        goal(
            "CPU per exchange at 10 req/s, B minus N",
            f"{extra:+.2f} ms (B {cpu(slow[B]):.2f} ms, N {cpu(slow[N]):.2f} ms)",
            "≤ +1 ms",
            extra <= 1,
        )
    )
    sse = run("sse_bench.py", workdir / "sse.json", *(("--sizes", "10") if quick else ()))["results"]
    for size in sse:
        row = sse[size]["rows"][B]
        verified = bool(sse[size]["recording_check"]["ok"])
        big = size != "10MB"
        rows.append(
            goal(
                f"{size} SSE response through B",
                f"{row['mib_per_s']:.1f} MiB/s, {row['processor_cpu_ms_per_mib']:.1f} ms CPU/MiB, RSS "
                f"+{row['rss_peak_growth_mib']:.0f} MiB, every event verified: {'yes' if verified else 'NO'}",
                "≥ 60 MiB/s, ≤ 10 ms CPU/MiB (100 MB), verified" if big else "verified (the goal is on 100 MB)",
                verified and (not big or (row["mib_per_s"] >= 60 and row["processor_cpu_ms_per_mib"] <= 10)),
            )
        )
    sessions = 2_000 if quick else 100_000
    index = run("audit_index_bench.py", workdir / "index.json", "--sessions", str(sessions))
    rows.append(
        goal(
            f"audit reindex, {sessions:,} sessions",
            f"{index['reindex_s']:.1f} s; refresh with nothing new {index['refresh_nothing_new_ms']:.0f} ms, "
            f"{index['refresh_new_segment_ms']:.2f} ms per new segment",
            "≤ 30 s (100k)",
            index["reindex_s"] <= 30 if sessions == 100_000 else None,  # --quick: no figure
        )
    )
    two = run("gateway_bench.py", workdir / "workers2.json", "--workers", "2", "--scenarios", "noop,authed", *window)
    w2 = two["scenarios"]
    change = cpu(w2[B]) / cpu(b) - 1
    rows.append(
        goal(
            "--workers 2 against 1 (B)",
            f"CPU per exchange {cpu(w2[B]):.2f} against {cpu(b):.2f} ms ({change:+.0%}); {w2[B]['rps']:.0f} against "
            f"{b['rps']:.0f} req/s; N {w2[N]['rps']:.0f} against {n['rps']:.0f}",
            "CPU per exchange unchanged (±15%)",
            abs(change) <= 0.15,
        )
    )
    sustained = run("sustained_bench.py", workdir / "sustained.json", "--minutes", f"{minutes:g}")
    samples = sustained["samples"]
    refused = sum(s["refused_per_s"] for s in samples) * float(sustained["args"]["interval"])
    queued = max((s["events_queued"] for s in samples), default=0)
    waiting = samples[-1]["segments_waiting"] if samples else 0
    s = sustained["summary"]
    rows.append(
        goal(
            f"B held {minutes:g} min (closed loop)",
            f"{s['rps']:.0f} req/s, {refused:.0f} refused, failures {s['failures'] or 'none'}, at most {queued:.0f} "
            f"events queued, {waiting:.0f} segments waiting at the end, recording check "
            f"{'ok' if sustained['check']['ok'] else 'FAILED'}",
            "0 refusals, backlog flat",
            refused == 0 and not s["failures"] and sustained["check"]["ok"] and waiting <= 2,
        )
    )
    fed = max((x["events_written_per_s"] for x in samples), default=0.0)
    with tempfile.TemporaryDirectory() as tmp:
        alone = asyncio.run(recorder_bench.run(2_000 if quick else 20_000, 16, Path(tmp)))
    rows.append(
        goal(
            "the recorder alone against the most the gateway fed it",
            f"{alone['events_per_s']:,.0f} events/s ({alone['cpu_us_per_event']:.1f} µs CPU per event) against "
            f"{fed:,.0f} events/s fed: x{alone['events_per_s'] / max(fed, 1):.1f}",
            "≥ x5",
            alone["events_per_s"] >= 5 * fed,
        )
    )
    return {"machine": gb.machine_info(), "rows": rows}


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(f"\n{m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, Envoy {m['envoy']}; "
          f"load average at start {report['load_average']}")  # fmt: skip
    print("| goal | figure | target | met |\n|---|---|---|---|")
    for r in report["rows"]:
        met = "n/a" if r["met"] is None else "yes" if r["met"] else "no"
        print(f"| {r['goal']} | {r['figure']} | {r['target']} | {met} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--minutes", type=float, default=5.0, help="length of the sustained run (default 5)")
    parser.add_argument("--out", type=Path, default=RESULTS / "goals.json")
    parser.add_argument("--quick", action="store_true", help="short windows: checks this script, gives no figures")
    args = parser.parse_args(argv)
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-goals-") as tmp:
        report = measure(args.minutes, Path(tmp), args.quick)
    report["load_average"] = load
    report["minutes_taken"] = round((time.monotonic() - t0) / 60, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print_table(report)
    print(f"\nresults written to {args.out} ({report['minutes_taken']} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
