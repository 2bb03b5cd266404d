"""Two gateway replicas x two workers against one replica x two workers, on this machine, one run each.

The production path of ``bench/gateway_bench.py`` (row B: tokens, policy, bound sessions, signed-less recording,
the same upstream, generator and 50/50 JSON/SSE mix). Row "1 replica": one Stack (Envoy + 2 processor workers).
Row "2 replicas": two Stacks sharing the session key file and the recording directory, as two pods would share the
key and the store; the generator's connections alternate between the two Envoys (a load balancer without
stickiness; each keep-alive connection stays on its replica). Every exchange must be recorded in the shared store.

    python bench/replicas_bench.py [--seconds 10] [--concurrency 16] [--out bench/results/replicas.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.gateway_bench import (  # noqa: E402
    Caller,
    Identity,
    LoadResult,
    Target,
    _client,
    authed_identities,
    cpu_seconds,
    envoy_and_processor,
    machine_info,
    machine_ticks,
    recording_check,
    stop_process,
    summarize,
    upstream_process,
    write_authed_config,
)
from extproc.authn.dev_issuer import DevIssuer  # noqa: E402
from extproc.launcher import free_port  # noqa: E402


async def generate(
    ports: list[int], path: str, identities: list[Identity], seconds: float, warmup: float, pids: dict[str, list[int]]
) -> LoadResult:
    """Closed loop, one connection per identity, connection n on ``ports[n % len(ports)]``; CPU of ``pids``."""
    now = time.perf_counter()
    measure_from, stop_at = now + warmup, now + warmup + seconds
    result = LoadResult(window_s=seconds)
    conns = [Caller(ports[n % len(ports)], path, who) for n, who in enumerate(identities)]
    load = asyncio.gather(*(_client(c, n % 2, measure_from, stop_at, result) for n, c in enumerate(conns)))
    pids = {**pids, "generator": [os.getpid()]}
    await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
    cpu0, busy0 = {k: cpu_seconds(*p) for k, p in pids.items()}, machine_ticks()
    await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
    cpu1, busy1 = {k: cpu_seconds(*p) for k, p in pids.items()}, machine_ticks()
    await load
    result.cpu_s = {k: round(cpu1[k] - cpu0[k], 3) for k in pids}
    busy, total = busy1[0] - busy0[0], busy1[1] - busy0[1]
    result.machine_busy = busy / total if total else 0.0
    return result


def run_generator(out: Connection, *args: Any) -> None:
    out.send(asyncio.run(generate(*args)))
    out.close()


def run_load(ctx: mp.context.SpawnContext, targets: list[Target], seconds: float, warmup: float) -> LoadResult:
    pids: dict[str, list[int]] = {}
    for t in targets:
        for name, ps in t.pids.items():
            pids.setdefault(name, []).extend(p for p in ps if p not in pids.get(name, []))
    receive, send = ctx.Pipe(duplex=False)
    args = ([t.port for t in targets], targets[0].path, targets[0].identities, seconds, warmup, pids)
    gen = ctx.Process(target=run_generator, name="bench-generator", daemon=True, args=(send, *args))
    gen.start()
    send.close()
    try:
        if not receive.poll(warmup + seconds + 60):
            raise TimeoutError("the load generator did not report back")
        return receive.recv()
    finally:
        stop_process(gen)
        receive.close()


def second_replica(config: Path) -> Path:
    """The same gateway.yaml on other ports (listen, admin, processor): same key file, policy and recording dir."""
    doc = yaml.safe_load(config.read_text())
    doc["listen"]["port"] = free_port()
    doc["admin"]["port"] = free_port()
    doc["processor"]["address"] = f"127.0.0.1:{free_port(block=doc['processor']['workers'])}"
    out = config.parent / "replica-2"
    out.mkdir()
    (out / "gateway.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return out / "gateway.yaml"


@contextmanager
def replicas(configs: list[Path], upstream: Target, identities: list[Identity]) -> Iterator[list[Target]]:
    with ExitStack() as stack:
        yield [stack.enter_context(envoy_and_processor(c, upstream, identities)) for c in configs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="processor workers per replica (default 2)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    rows: dict[str, Any] = {}
    with (
        tempfile.TemporaryDirectory(prefix="replicas-bench-") as tmp,
        upstream_process(ctx, 0.002, args.concurrency) as upstream,
        DevIssuer(Path(tmp) / "issuer-keys") as issuer,
    ):
        for n in (1, 2):
            config = write_authed_config(Path(tmp) / f"r{n}", upstream.port, issuer.url, args.workers)
            configs = [config] if n == 1 else [config, second_replica(config)]
            identities = authed_identities(config, issuer, args.concurrency)
            print(f"{n} replica(s) x {args.workers} workers ...", flush=True)
            try:
                with replicas(configs, upstream, identities) as targets:
                    loaded = run_load(ctx, targets, args.seconds, args.warmup)
            except RuntimeError:  # a part died: its log says why (the folder goes with the temporary directory)
                for c in configs:
                    print((c.parent / "stack.log").read_text(errors="replace")[-3000:], file=sys.stderr)
                raise
            row = summarize(loaded)
            row["recording"] = recording_check(config, loaded)
            rows[f"{n} replica(s) x {args.workers} workers"] = row
    report = {"machine": machine_info(), "seconds": args.seconds, "concurrency": args.concurrency, "rows": rows}
    for name, row in rows.items():
        cores = {k: round(v / args.seconds, 2) for k, v in row["cpu_s"].items()}
        print(
            f"{name}: {row['rps']} req/s, p50 {row['p50_ms']} ms, p99 {row['p99_ms']} ms, processor CPU "
            f"{row['cpu_ms_per_request'].get('processor')} ms/exchange, cores {cores}, machine busy "
            f"{row['machine_busy_pct']} %, failures {row['failures']}, recorded ok {row['recording']['ok']}"
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
