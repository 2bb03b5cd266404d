"""SIEM export and tracing through the gateway (issue 26): scenario B of gateway_bench.py against the same B with
an OCSF file export and OpenTelemetry tracing on (every exchange sampled, spans POSTed as OTLP/HTTP protobuf to a
receiver on loopback), rows alternated B, B+obs, B+obs, B ... in one run against one upstream, one issuer.

The goal: B's processor CPU per exchange with both on within 10% of both off. Each row is its own Stack (Envoy and
one processor worker, a fresh recording directory); the receiver runs in this process, which is not measured (the
rows' CPU is the processor's, every thread of it). Each observed row checks that the OCSF file holds one event per
recorded exchange and that the receiver got spans.

    python bench/observed_bench.py [--seconds 8] [--rounds 2] [--concurrency 16] [--sample-ratio 1.0] [--rate R]
        [--base DIR]     also rows whose processor runs another tree (a plain copy of main), both on
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import gateway_bench as gb
from extproc.authn.dev_issuer import DevIssuer

RESULTS = Path(__file__).resolve().parent / "results" / "observed.json"


class _Receiver(BaseHTTPRequestHandler):
    """OTLP/HTTP traces endpoint that takes every request (counts requests and bytes) and answers 200."""

    counts: dict[str, int]

    def do_POST(self) -> None:
        n = int(self.headers.get("content-length") or 0)
        self.rfile.read(n)
        self.counts["requests"] += 1
        self.counts["bytes"] += n
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def otlp_receiver() -> Iterator[tuple[str, dict[str, int]]]:
    counts = {"requests": 0, "bytes": 0}
    handler = type("Receiver", (_Receiver,), {"counts": counts})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", counts
    finally:
        server.shutdown()
        server.server_close()


def observe(config: Path, endpoint: str, sample_ratio: float) -> Path:
    """Add the OCSF file export and tracing to a B gateway.yaml; returns the OCSF file's path."""
    doc = yaml.safe_load(config.read_text())
    ocsf = config.parent / "ocsf.jsonl"
    doc["export"] = {"file": {"path": str(ocsf)}, "include": ["exchanges"]}
    doc["telemetry"] = {"endpoint": endpoint, "sample_ratio": sample_ratio}
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    return ocsf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="round pairs, alternated B obs / obs B (default 2)")
    parser.add_argument("--sample-ratio", type=float, default=1.0)
    parser.add_argument(
        "--rate", type=float, help="open loop at this many req/s (every row the same load; default: closed loop)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--base",
        type=Path,
        help="also rows whose processor runs another tree (PYTHONPATH=BASE, e.g. a plain copy of main) with both on",
    )
    args = parser.parse_args(argv)
    args.profile, args.sse_gap_ms = False, 0.0  # what gateway_bench.run_load reads
    ctx = mp.get_context("spawn")
    modes = ("off", "base", "on") if args.base else ("off", "on")
    order = [m for i in range(args.rounds) for m in (modes if i % 2 == 0 else modes[::-1])]
    rows: list[dict[str, Any]] = []
    info = gb.machine_info()
    print(f"{info['cpu_count']} CPUs ({info['cpu_model']}), load {os.getloadavg()[0]:.1f}; rows {' '.join(order)}")
    with (
        tempfile.TemporaryDirectory(prefix="observed-bench-") as tmp,
        gb.upstream_process(ctx, 0.0, args.concurrency) as upstream,
        DevIssuer(Path(tmp) / "issuer-keys") as issuer,
        otlp_receiver() as (endpoint, received),
    ):
        for n, mode in enumerate(order):
            config = gb.write_authed_config(Path(tmp) / f"{mode}-{n}", upstream.port, issuer.url)
            ocsf = observe(config, endpoint, args.sample_ratio) if mode != "off" else None
            identities = gb.authed_identities(config, issuer, args.concurrency)
            before = dict(received)
            path = os.environ.get("PYTHONPATH")
            if mode == "base":  # the processor (python -m extproc) imports the other tree
                os.environ["PYTHONPATH"] = str(args.base.resolve())
            try:
                with gb.envoy_and_processor(config, upstream, identities) as target:
                    loaded = gb.run_load(ctx, target, args, None, args.rate)
            finally:
                if path is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = path
            row = gb.summarize(loaded)
            check = gb.recording_check(config, loaded)
            # Tracing may add one event per exchange (``trace.context``, the record format before the ids went
            # into ``exchange.end``): either count is a complete recording.
            extra = check["recorded_events"] - check["expected_events"]
            ok = not loaded.failures and extra in (0, sum(loaded.issued.values()) if ocsf else 0)
            row.update(mode=mode, load=round(os.getloadavg()[0], 1), recording_ok=ok, events_over=extra)
            if ocsf is not None:  # the Stack has stopped: every event exported, every span shipped
                row["ocsf_events"] = len(ocsf.read_bytes().splitlines())
                row["otlp_requests"] = received["requests"] - before["requests"]
                row["otlp_bytes"] = received["bytes"] - before["bytes"]
            rows.append(row)
            cpu = row["cpu_ms_per_request"]["processor"]
            print(f"  {mode:>4}: {row['rps']:7.1f} req/s, processor {cpu:.3f} ms/exchange, p50 {row['p50_ms']} ms"
                  + (f", {row['ocsf_events']} OCSF events, {row['otlp_requests']} OTLP posts" if ocsf else ""),
                  flush=True)  # fmt: skip
    med = {m: statistics.median(r["cpu_ms_per_request"]["processor"] for r in rows if r["mode"] == m) for m in modes}
    rps = {m: statistics.median(r["rps"] for r in rows if r["mode"] == m) for m in modes}
    ratio = med["on"] / med["off"]
    if args.base:
        print(f"base tree, both on: {med['base']:.3f} ms, x{med['base'] / med['off']:.3f} of B (this tree's on/base: "
              f"x{med['on'] / med['base']:.3f})")  # fmt: skip
    print(f"B {med['off']:.3f} ms, B + export + tracing {med['on']:.3f} ms of processor CPU per exchange: x{ratio:.3f} "
          f"(req/s x{rps['on'] / rps['off']:.3f}); goal x1.10")  # fmt: skip
    report = {"machine": info, "parameters": vars(args) | {"out": str(args.out)}, "rows": rows, "cpu_ratio": ratio}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    ok = all(r["recording_ok"] and not r["failures"] for r in rows)
    ok = ok and all(r["ocsf_events"] >= r["requests"] and r["otlp_requests"] for r in rows if r["mode"] != "off")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
