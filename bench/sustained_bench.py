"""Sustained load: scenario B of gateway_bench.py (auth + policy + signed recording) held for minutes.

Closed loop at ``--concurrency`` connections for ``--minutes``; every ``--interval`` seconds it samples Envoy's
response counters (admin ``/stats``) and the processor's recorder gauges (its Prometheus ``/metrics``): answers
and refusals per second, events written per second, events queued in memory, segments waiting in the spool and
the spool's bytes. Afterwards the Stack is stopped and every exchange answered must be in the recording.

    .venv/bin/python bench/sustained_bench.py [--minutes 5] [--concurrency 16] [--interval 10] [--out FILE]

Exits non-zero on any refusal or failed request, or if the recording check fails. The table goes to stdout and
the samples to ``bench/results/sustained.json``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing as mp
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import gateway_bench as gb
from extproc.authn.dev_issuer import DevIssuer
from extproc.launcher import free_port

RESULTS = Path(__file__).resolve().parent / "results" / "sustained.json"
RECORDER = {
    "written": "mcp_extproc_recording_events_written_total",
    "queued": "mcp_extproc_recording_queued_events",
    "waiting": "mcp_extproc_recording_segments_waiting",
    "spool": "mcp_extproc_recording_spool_bytes",
    "accepting": "mcp_extproc_recording_accepting",
}


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def read_sample(admin_port: int, metrics_port: int) -> dict[str, float]:
    """One reading: Envoy's downstream response counters and the recorder's gauges and counters."""
    out: dict[str, float] = {"t": time.monotonic()}
    for line in _get(f"http://127.0.0.1:{admin_port}/stats?filter=^http\\.mcp\\.downstream_rq_[1-5]xx$").splitlines():
        name, _, value = line.partition(": ")
        out[name.rsplit("_", 1)[-1]] = float(value)  # "2xx", "5xx", …
    metrics = _get(f"http://127.0.0.1:{metrics_port}/metrics")
    for key, name in RECORDER.items():
        m = re.search(rf"^{name} (\S+)$", metrics, re.M)
        out[key] = float(m.group(1)) if m else float("nan")
    return out


def sample_until(stop: threading.Event, admin: int, metrics: int, every: float, into: list[dict[str, float]]) -> None:
    while not stop.wait(every if into else 1.0):  # the first reading once the warm-up is under way
        try:
            into.append(read_sample(admin, metrics))
        except OSError as e:  # a missed reading is shown as a gap, the run goes on
            print(f"  (sample failed: {e})", flush=True)


def rows(samples: list[dict[str, float]]) -> list[dict[str, float]]:
    """Per interval: rates from counter differences, gauges as read at its end."""
    out = []
    for a, b in itertools.pairwise(samples):
        dt = b["t"] - a["t"]
        out.append(
            {
                "t_s": round(b["t"] - samples[0]["t"], 1),
                "answered_per_s": round((b.get("2xx", 0) - a.get("2xx", 0)) / dt, 1),
                "refused_per_s": round((b.get("5xx", 0) - a.get("5xx", 0) + b.get("4xx", 0) - a.get("4xx", 0)) / dt, 1),
                "events_written_per_s": round((b["written"] - a["written"]) / dt, 1),
                "events_queued": b["queued"],
                "segments_waiting": b["waiting"],
                "spool_kib": round(b["spool"] / 1024, 1),
                "accepting": b["accepting"],
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--minutes", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between samples (default 10)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    load_args = argparse.Namespace(seconds=args.minutes * 60, warmup=1.0, profile=False, concurrency=args.concurrency)
    info = gb.machine_info()
    print(f"{info['cpu_count']} CPUs ({info['cpu_model']}), Python {info['python']}, Envoy {info['envoy']}; "
          f"B closed loop, {args.concurrency} connections, {args.minutes:g} min")  # fmt: skip
    ctx = mp.get_context("spawn")
    samples: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="sustained-bench-") as tmp,
        gb.upstream_process(ctx, 0.0, args.concurrency) as upstream,
        DevIssuer(Path(tmp) / "issuer-keys") as issuer,
    ):
        config = gb.write_authed_config(Path(tmp) / "authed", upstream.port, issuer.url)
        doc = yaml.safe_load(config.read_text())
        metrics_port = doc["processor"]["metrics_port"] = free_port()
        config.write_text(yaml.safe_dump(doc, sort_keys=False))
        identities = gb.authed_identities(config, issuer, args.concurrency)
        with gb.envoy_and_processor(config, upstream, identities) as target:
            stop = threading.Event()
            sampler = threading.Thread(
                target=sample_until, args=(stop, doc["admin"]["port"], metrics_port, args.interval, samples)
            )
            sampler.start()
            try:
                loaded = gb.run_load(ctx, target, load_args)
            finally:
                stop.set()
                sampler.join()
            samples.append(read_sample(doc["admin"]["port"], metrics_port))
        check = gb.recording_check(config, loaded)
    summary = gb.summarize(loaded)
    table = rows(samples)
    print(f"{'t s':>6}{'answered/s':>12}{'refused/s':>11}{'written ev/s':>14}{'queued ev':>11}{'seg waiting':>13}"
          f"{'spool KiB':>11}")  # fmt: skip
    for r in table:
        print(f"{r['t_s']:>6}{r['answered_per_s']:>12}{r['refused_per_s']:>11}{r['events_written_per_s']:>14}"
              f"{r['events_queued']:>11.0f}{r['segments_waiting']:>13.0f}{r['spool_kib']:>11}")  # fmt: skip
    cpu = summary.get("cpu_ms_per_request", {})
    print(
        f"\n{summary['requests']} answered in {args.minutes:g} min = {summary['rps']} req/s; "
        f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms; failures {summary['failures'] or 'none'}; "
        f"processor CPU {cpu.get('processor')} ms per request"
    )
    verdict = "ok" if check["ok"] else "MISMATCH"
    written, expected = check["recorded_events"], check["expected_events"]
    print(f"recording check: {written} events written, {expected} expected ({verdict})")
    peak_queue = max((r["events_queued"] for r in table), default=0)
    waiting = table[-1]["segments_waiting"] if table else 0
    print(f"recorder backlog: at most {peak_queue:.0f} events queued; {waiting:.0f} segments waiting at end")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": info, "args": {**vars(args), "out": str(args.out)}, "summary": summary, "samples": table}
    args.out.write_text(json.dumps({**report, "check": check}, indent=2, default=str))
    return 0 if check["ok"] and not summary["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
