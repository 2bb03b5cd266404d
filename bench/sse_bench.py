"""Large SSE responses through the gateway: MiB/s, processor CPU per MiB and memory, every event recorded.

One `tools/call` POST whose answer is a `text/event-stream` body of N bytes: JSON-RPC events of about 64 KiB
(`notifications/message` and `notifications/progress`, alternating) and then the result, written by a raw asyncio
upstream in chunks. Rows, for each body size (default 10 MB and 100 MB):

  envoy only                        client -> Envoy -> upstream (the gateway's bootstrap minus the ext_proc filter)
  envoy + no-op processor           the same config, processor started with --passthrough (CONTINUE to every
                                    ext_proc message, nothing recorded): what the gRPC transport alone costs
  envoy + processor (auth+policy)   the production path as bench/gateway_bench.py's scenario B runs it
                                    (launcher.Stack, a bearer token from a development issuer, a policy allowing
                                    the call, signed recording into a temp file store, 1 processor worker)

Measured per row: MiB/s end to end (request sent to last byte read), processor CPU ms per MiB, processor peak
RSS growth (VmRSS sampled every 10 ms from before the request). After the stack stopped: every event of the
body recorded and the session verified with the public key (chains, manifests, signatures).

    python bench/sse_bench.py [--sizes 10,100] [--event-kib 64] [--out bench/results/sse.json] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.faults.harness import rss_kib  # noqa: E402
from bench.gateway_bench import (  # noqa: E402
    Identity,
    Target,
    authed_identities,
    cpu_seconds,
    envoy_and_noop_processor,
    envoy_and_processor,
    envoy_only,
    machine_info,
    profile_path,
    read_response,
    stop_process,
    write_authed_config,
)
from extproc.authn.dev_issuer import DevIssuer  # noqa: E402
from extproc.launcher import can_connect, free_port, wait_until  # noqa: E402
from extproc.recording.manifest import generate_keys, load_public_key  # noqa: E402
from extproc.recording.replay import load_session  # noqa: E402
from extproc.recording.store.file import FileStore  # noqa: E402
from extproc.settings import load as load_settings  # noqa: E402

MB = 1_000_000
MIB = 1 << 20
RESULTS = ROOT / "bench" / "results" / "sse.json"
ENVOY, NOOP, GATEWAY = "envoy only", "envoy + no-op processor", "envoy + processor (auth + policy)"
CALL = b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"big"}}}'
# A first small call through each row (token verified, issuer keys fetched, session bound): the figures are the
# steady state, not a cold start.
WARMUP = b'{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"text":"warmup"}}}'
WARMUP_BODY = b'event: message\nid: w\ndata: {"jsonrpc":"2.0","id":6,"result":{"content":[]}}\n\n'
# Ordinary log-like text: a few of its words contain what the built-in redactions look for ("rapid" holds "api",
# "tokenizer" holds "token"), so the redaction patterns run on these strings as they would on real output.
WORDS = (
    "the quick brown fox jumps over lazy dog rapid tokenizer build step cache layer request handler queue "
    "worker shard index value record stream event batch commit merge branch deploy service metric trace span "
    "retry timeout backoff limit window bucket node cluster region zone pod container image tag digest"
).split()


# --- the body: JSON-RPC events of about event_size bytes, then the result --------------------------------------


# With --unicode: words a server writes as UTF-8 (curly quotes, accents, CJK), one in eight.
UNICODE_WORDS = ["\u201cquoted\u201d", "caf\u00e9", "na\u00efve", "\u4e2d\u6587", "\u2014", "r\u00e9sum\u00e9"]


def make_events(total: int, event_size: int, seed: int = 1, unicode: bool = False) -> list[bytes]:
    """SSE events summing to about ``total`` bytes; the last one is the tools/call result. ``unicode``: some
    words outside ASCII, written as UTF-8 (not escaped), as most servers do."""
    rng = random.Random(seed)
    words = WORDS + UNICODE_WORDS * (len(WORDS) // 8 // len(UNICODE_WORDS) + 1) if unicode else WORDS
    text = " ".join(rng.choice(words) for _ in range(event_size // 4))
    events: list[bytes] = []
    size, n = 0, 0
    while size < total:
        n += 1
        filler = text[(n * 7) % 100 :][: event_size - 200]
        if n % 2:
            msg: dict[str, Any] = {
                "jsonrpc": "2.0",
                "method": "notifications/message",
                "params": {"level": "info", "logger": "build", "data": f"{n} {filler}"},
            }
        else:
            msg = {
                "jsonrpc": "2.0",
                "method": "notifications/progress",
                "params": {"progressToken": "p7", "progress": n, "message": f"{n} {filler}"},
            }
        data = json.dumps(msg, separators=(",", ":"), ensure_ascii=not unicode).encode()
        ev = b"event: message\nid: %d\ndata: %s\n\n" % (n, data)
        events.append(ev)
        size += len(ev)
    result = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": f"{n} events"}]}}
    events.append(b"event: message\nid: %d\ndata: %s\n\n" % (n + 1, json.dumps(result).encode()))
    return events


# --- upstream: one POST, one chunked text/event-stream answer --------------------------------------------------

_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nMcp-Session-Id: %s\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes, chunk: int) -> None:
    try:
        while True:
            raw = await reader.readuntil(b"\r\n\r\n")
            head = raw.lower()
            i = head.find(b"\r\ncontent-length:")
            length = int(head[i + 17 : head.index(b"\r\n", i + 17)]) if i >= 0 else 0
            request = await reader.readexactly(length)
            j = head.find(b"\r\nmcp-session-id:")
            session = raw[j + 17 : raw.index(b"\r\n", j + 17)].strip() if j >= 0 else b""
            writer.write(_HEAD % session)
            if b'"warmup"' in request:
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(WARMUP_BODY), WARMUP_BODY))
                await writer.drain()
                continue
            view = memoryview(body)
            for at in range(0, len(body), chunk):
                part = view[at : at + chunk]
                writer.write(b"%x\r\n" % len(part) + bytes(part) + b"\r\n")
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def run_upstream(port: int, total: int, event_size: int, chunk: int, unicode: bool = False) -> None:
    body = b"".join(make_events(total, event_size, unicode=unicode))

    async def main() -> None:
        server = await asyncio.start_server(functools.partial(_serve, body=body, chunk=chunk), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# --- client and samplers ------------------------------------------------------------------------------------


async def one_call(port: int, path: str, who: Identity, call: bytes = CALL) -> tuple[int, bytes, float]:
    """Status, body and seconds from request sent to last byte read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    auth = f"Authorization: {who.authorization}\r\n" if who.authorization else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        f"Accept: application/json, text/event-stream\r\n{auth}Mcp-Session-Id: {who.session}\r\n"
        f"Content-Length: {len(call)}\r\n\r\n"
    )
    t0 = time.perf_counter()
    writer.write(head.encode() + call)
    status, _, body = await read_response(reader)
    elapsed = time.perf_counter() - t0
    writer.close()
    return status, body, elapsed


def faults(pid: int | None) -> int:
    """Minor page faults of ``pid`` so far (fresh memory the kernel maps and zeroes: part of the system CPU)."""
    if pid is None:
        return 0
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def cpu_split(pid: int | None) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` so far."""
    if pid is None:
        return 0.0, 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class Peak:
    """VmRSS of ``pid`` every 10 ms in a thread; ``base`` at start, ``peak`` the highest seen."""

    def __init__(self, pid: int | None) -> None:
        self.pid, self.base, self.peak = pid, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Peak:
        if self.pid is not None:
            self.base = self.peak = rss_kib(self.pid)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            assert self.pid is not None
            self.peak = max(self.peak, rss_kib(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def metric(metrics_url: str, name: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


class QueuePeak(threading.Thread):
    """The recorder's queue (events emitted, not yet in the spool) every 250 ms: its peak. Each look is a /metrics
    scrape that costs the processor about 1 ms of CPU: every 50 ms, it was ~5 % of the CPU measured per MiB (the
    queue is bounded by the commit points since: at most a message's events, 15-20 here)."""

    def __init__(self, metrics_url: str | None) -> None:
        super().__init__(daemon=True)
        self.url, self.peak = metrics_url, 0.0
        self._done = threading.Event()

    def run(self) -> None:
        while self.url is not None and not self._done.wait(0.25):
            self.peak = max(self.peak, metric(self.url, "mcp_extproc_recording_queued_events"))

    def stop(self) -> float:
        self._done.set()
        if self.is_alive():
            self.join()
        return self.peak


def body_messages(metrics_url: str | None) -> tuple[float, float]:
    """(count, seconds) of response-body ext_proc messages the processor handled so far (its /metrics)."""
    if metrics_url is None:
        return 0.0, 0.0
    with urllib.request.urlopen(metrics_url, timeout=5) as r:
        text = r.read().decode()
    found = dict.fromkeys(("count", "sum"), 0.0)
    for line in text.splitlines():
        for key in found:
            if line.startswith(f'mcp_extproc_message_seconds_{key}{{phase="response_body"}}'):
                found[key] = float(line.rsplit(" ", 1)[1])
    return found["count"], found["sum"]


def measure(
    port: int,
    path: str,
    who: Identity,
    expected: bytes,
    pid: int | None,
    spy: str | None,
    metrics_url: str | None = None,
) -> dict[str, Any]:
    """One call (after a small one); throughput, CPU and memory of the processor ``pid`` (None: Envoy alone)."""
    status, body, _ = asyncio.run(one_call(port, path, who, WARMUP))
    if (status, body) != (200, WARMUP_BODY):
        raise RuntimeError(f"warm-up call failed: {status} {body[:200]!r}")
    messages0 = body_messages(metrics_url)
    profiler = None
    if spy and pid is not None:
        profiler = subprocess.Popen(
            [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(pid), "-r", "200", "-f", "raw",
             "-o", spy, *os.environ.get("PYSPY_ARGS", "").split()],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
    perf = None
    if pid is not None and os.environ.get("SSE_PERF"):  # SSE_PERF=file: `perf record` (kernel frames too)
        perf = subprocess.Popen(
            ["perf", "record", "-F", "499", "-g", "-p", str(pid), "-o", os.environ["SSE_PERF"]],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)
    cpu0 = cpu_seconds(pid) if pid is not None else 0.0
    split0, faults0 = cpu_split(pid), faults(pid)
    queue = QueuePeak(metrics_url)
    queue.start()
    with Peak(pid) as peak:
        status, body, elapsed = asyncio.run(one_call(port, path, who))
    queued = queue.stop()
    cpu = (cpu_seconds(pid) - cpu0) if pid is not None else 0.0
    user, system = (b - a for a, b in zip(split0, cpu_split(pid), strict=True))
    minor_faults = faults(pid) - faults0
    if perf is not None:
        perf.send_signal(signal.SIGINT)
        perf.wait(60)
    if profiler is not None:
        profiler.send_signal(signal.SIGINT)
        profiler.wait(60)
    mib = len(expected) / MIB
    row: dict[str, Any] = {
        "status": status,
        "body_ok": body == expected,
        "bytes": len(body),
        "seconds": round(elapsed, 3),
        "mib_per_s": round(mib / elapsed, 1),
    }
    if metrics_url is not None:
        count, seconds = (b - a for a, b in zip(messages0, body_messages(metrics_url), strict=True))
        row.update(
            body_messages=int(count),
            body_message_kib=round(len(expected) / 1024 / count, 1) if count else None,
            handler_ms_per_mib=round(seconds * 1000 / mib, 2),  # our code per body message, without gRPC transport
            recorder_queue_peak_events=int(queued),
        )
    if pid is not None:
        row.update(
            processor_cpu_s=round(cpu, 3),
            processor_cpu_ms_per_mib=round(cpu * 1000 / mib, 2),
            processor_user_ms_per_mib=round(user * 1000 / mib, 2),
            processor_system_ms_per_mib=round(system * 1000 / mib, 2),
            processor_mib_per_cpu_s=round(mib / cpu, 1) if cpu else None,
            processor_minor_faults_per_mib=round(minor_faults / mib),
            rss_base_mib=round(peak.base / 1024, 1),
            rss_peak_growth_mib=round((peak.peak - peak.base) / 1024, 1),
        )
    return row


def recording_check(config: Path, pub: Path, events: list[bytes]) -> dict[str, Any]:
    """Every event of the body recorded as an mcp.response, in order, and the session verifies with ``pub``."""
    store = FileStore(load_settings(config).recording.directory)
    key = load_public_key(pub)
    responses: list[dict[str, Any]] = []
    problems: list[str] = []
    states = []
    for sid in store.list_sessions():
        s = load_session(store, sid, key)
        problems += [str(p) for p in s.problems] + [f"unfinished {u}" for u in s.unfinished]
        states.append(s.summary()["state"])
        responses += [e for e in s.events if e.get("type") == "mcp.response" and e.get("sse_id") != "w"]
    ids = [r.get("sse_id") for r in responses]
    expected_ids = [str(i) for i in range(1, len(events) + 1)]
    sizes_ok = [r.get("size") for r in responses] == [len(e) for e in events]
    withheld = sum(1 for r in responses if "withheld" in (r.get("body") or {}))
    ok = ids == expected_ids and sizes_ok and not problems and states == ["complete"] and not withheld
    return {
        "events_sent": len(events),
        "events_recorded": len(responses),
        "withheld": withheld,
        "sizes_match": sizes_ok,
        "session_states": states,
        "problems": problems[:5],
        "signatures_checked": True,
        "ok": ok,
    }


# --- main -------------------------------------------------------------------------------------------------------


def run_size(
    ctx: Any, workdir: Path, total: int, args: argparse.Namespace
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    events = make_events(total, args.event_kib << 10, unicode=args.unicode)
    expected = b"".join(events)
    port = free_port()
    upstream = ctx.Process(
        target=run_upstream,
        args=(port, total, args.event_kib << 10, args.chunk_kib << 10, args.unicode),
        daemon=True,
    )
    upstream.start()
    rows: dict[str, dict[str, Any]] = {}
    try:
        wait_until(lambda: upstream.is_alive() and can_connect(f"127.0.0.1:{port}"), 20, "the upstream")
        with DevIssuer(workdir / "issuer-keys") as issuer:
            config = write_authed_config(workdir / "gw", port, issuer.url)
            key, pub = generate_keys(workdir / "signing")
            if args.capture is not None:  # the policy's capture level for every server (policy/capture.py)
                with (config.parent / "policies" / "bench.yaml").open("a") as policy:
                    policy.write(f'recording:\n  - servers: ["*"]\n    capture: {args.capture}\n')
            doc = yaml.safe_load(config.read_text())
            doc["recording"]["signing_key"] = str(key)
            doc["recording"].update(args.recording_options)
            for dotted, value in args.settings.items():  # e.g. limits.max_request_body_bytes: Envoy's buffer
                *parents, leaf = dotted.split(".")
                node = doc
                for key in parents:
                    node = node.setdefault(key, {})
                node[leaf] = value
            doc["processor"]["metrics_port"] = metrics_port = free_port()
            config.write_text(yaml.safe_dump(doc, sort_keys=False))
            who = authed_identities(config, issuer, 1)[0]
            upstream_target = Target(port, "/mcp", {}, [who])
            if not args.gateway_only:
                with envoy_only(config, upstream_target) as target:
                    rows[ENVOY] = measure(target.port, target.path, who, expected, None, None)
                with envoy_and_noop_processor(config, upstream_target) as target:  # gRPC's own cost: CONTINUE to all
                    rows[NOOP] = measure(target.port, target.path, who, expected, target.pids["processor"][0], None)
                shutil.rmtree(config.parent / "stack")
            with envoy_and_processor(config, upstream_target, [who]) as target:
                spy = str(profile_path(args.out, f"sse-{total // MB}mb")) if args.profile else None
                metrics = f"http://127.0.0.1:{metrics_port}/metrics"
                pid = target.pids["processor"][0]
                rows[GATEWAY] = measure(target.port, target.path, who, expected, pid, spy, metrics)
            check = recording_check(config, pub, events)
    finally:
        stop_process(upstream)
    return rows, check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="10,100", help="body sizes in MB, comma separated (default 10,100)")
    parser.add_argument("--event-kib", type=int, default=64, help="size of each event in KiB (default 64)")
    parser.add_argument("--chunk-kib", type=int, default=16, help="upstream write size in KiB (default 16)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--profile", action="store_true", help="py-spy the processor: bench/results/profile-sse-*")
    parser.add_argument("--gateway-only", action="store_true", help="only the gateway row (for A/B runs)")
    parser.add_argument("--unicode", action="store_true", help="one word in eight outside ASCII, as UTF-8")
    parser.add_argument(
        "--capture", choices=["full", "redacted", "shape", "metadata"], help="policy capture level of every server"
    )
    parser.add_argument(
        "--recording",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra recording: key (YAML value), e.g. segment_max_bytes=4194304; repeatable",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="DOTTED.KEY=VALUE",
        help="any gateway config key (YAML value), e.g. limits.max_request_body_bytes=262144 (Envoy's per-connection "
        "buffer, so the largest response-body message the processor gets); repeatable",
    )
    args = parser.parse_args(argv)
    args.settings = {}
    for option in args.set:
        key, sep, value = option.partition("=")
        if not sep:
            parser.error(f"--set {option!r}: expected DOTTED.KEY=VALUE")
        args.settings[key.strip()] = yaml.safe_load(value)
    args.recording_options = {}
    for option in args.recording:
        key, sep, value = option.partition("=")
        if not sep:
            parser.error(f"--recording {option!r}: expected KEY=VALUE")
        args.recording_options[key.strip()] = yaml.safe_load(value)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine_info()
    print(f"{info['cpu_count']} CPUs ({info['cpu_model']}), Python {info['python']}, Envoy {info['envoy']}")
    ctx = mp.get_context("spawn")
    results: dict[str, Any] = {}
    ok = True
    for size in [int(s) for s in args.sizes.split(",")]:
        print(f"{size} MB body ...", flush=True)
        with tempfile.TemporaryDirectory(prefix="sse-bench-") as tmp:
            rows, check = run_size(ctx, Path(tmp), size * MB, args)
        results[f"{size}MB"] = {"rows": rows, "recording_check": check}
        ok &= check["ok"] and all(r["status"] == 200 and r["body_ok"] for r in rows.values())
    print_table(results)
    report = {
        "machine": info,
        "parameters": {
            "event_kib": args.event_kib,
            "upstream_chunk_kib": args.chunk_kib,
            "processor_workers": 1,
            "path": "auth (dev issuer token) + policy (one allow rule) + signed recording (file store)",
            "recording_options": args.recording_options,
            "settings": args.settings,
            "capture": args.capture or "redacted (default)",
            "unicode": args.unicode,
        },
        "results": results,
        "sha256_of_10MB_body": hashlib.sha256(b"".join(make_events(10 * MB, args.event_kib << 10))).hexdigest(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {args.out}")
    return 0 if ok else 1


def print_table(results: dict[str, Any]) -> None:
    print()
    print(f"{'body':>6}  {'row':<34}{'MiB/s':>8}{'s':>8}{'CPU ms/MiB':>12}{'RSS +MiB':>10}{'body':>6}  handler")
    for size, r in results.items():
        for name, row in r["rows"].items():
            cpu = row.get("processor_cpu_ms_per_mib")
            rss = row.get("rss_peak_growth_mib")
            print(
                f"{size:>6}  {name:<34}{row['mib_per_s']:>8.1f}{row['seconds']:>8.2f}"
                f"{'-' if cpu is None else f'{cpu:.1f}':>12}{'-' if rss is None else f'{rss:.1f}':>10}"
                f"{'ok' if row['body_ok'] else 'BAD':>6}"
                + (
                    f"  {row['handler_ms_per_mib']:.1f} ms/MiB in {row['body_messages']} messages of "
                    f"{row['body_message_kib']} KiB"
                    if "handler_ms_per_mib" in row
                    else ""
                )
            )
        c = r["recording_check"]
        print(
            f"{size:>6}  recording: {c['events_recorded']} of {c['events_sent']} events, withheld {c['withheld']}, "
            f"sizes {'match' if c['sizes_match'] else 'DIFFER'}, states {c['session_states']}, "
            f"problems {len(c['problems'])}: {'ok' if c['ok'] else 'MISMATCH'}"
        )


if __name__ == "__main__":
    sys.exit(main())
