"""The recorder's own capacity in events/s: nothing but recording, with signed manifests and the digest log on.

Built as the processor builds it (``recording/setup.build_runtime``: spool, uploader, digest log, completer, file
store). Exchanges of ``--sessions`` MCP sessions are emitted as fast as the recorder takes them, each as the
gateway records a JSON ``tools/call`` (6 events: exchange.start, mcp.request, policy.decision, http.response,
mcp.response, exchange.end). The clock stops when every event is chained, in the spool, synced, and the runtime is
closed (every segment sealed, signed, stored; the closing digest written). Then the store is verified.

    python bench/recorder_bench.py [--exchanges 20000] [--sessions 16] [--rate EXCHANGES_PER_S]

``--rate`` paces the exchanges (open loop, the events of one exchange 1 ms apart, as a fast upstream answers)
to show the CPU per event at a low rate, where a writer woken per event would cost the most. ``--commit`` waits,
as an exchange does, until its events are written before its request goes on, before its response, and at its end
(``Recorder.written``).

``--sse-mib N`` records one large SSE response instead: N MiB of 64 KiB ``mcp.response`` events in one session,
waiting at a commit point after every 16 events (as the gateway does for each ~1 MiB body message Envoy sends). It
prints MiB/s, CPU ms per MiB (user and system) and voluntary context switches per MiB (thread hops), then verifies.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import tempfile
import time
from pathlib import Path

from extproc.recording.audit import audit
from extproc.recording.config import Recording
from extproc.recording.events import (
    Event,
    ExchangeEnd,
    ExchangeStart,
    McpRequest,
    McpResponse,
    PolicyDecision,
    ResponseStart,
)
from extproc.recording.manifest import generate_keys, load_public_key
from extproc.recording.setup import build_runtime

CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}
RESULT = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "hi"}], "isError": False}}
HEADERS = {
    ":method": "POST",
    ":path": "/bench/mcp",
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-session-id": "bench",
    "user-agent": "bench",
}


def exchange(session: str, n: int, t: float) -> list[Event]:
    ex = f"ex-{n}"
    return [
        ExchangeStart(
            session=session,
            exchange=ex,
            index=0,
            time=t,
            client="127.0.0.1",
            server="bench",
            method="POST",
            path="/bench/mcp",
            headers=HEADERS,
            principal={"issuer": "https://idp", "subject": "alice", "username": "alice", "groups": ["eng"]},
        ),
        McpRequest(session=session, exchange=ex, index=1, time=t, messages=[CALL], body={"raw": str(CALL)}, size=120),
        PolicyDecision(
            session=session,
            exchange=ex,
            index=2,
            time=t,
            allowed=True,
            rule="r",
            reason="allow rule r",
            call="tools/call echo",
            message_id=7,
        ),
        ResponseStart(
            session=session,
            exchange=ex,
            index=3,
            time=t,
            status=200,
            headers={":status": "200", "content-type": "application/json"},
        ),
        McpResponse(session=session, exchange=ex, index=4, time=t, messages=[RESULT], size=110),
        ExchangeEnd(
            session=session, exchange=ex, index=5, time=t, status=200, duration_ms=1.0, bytes_in=120, bytes_out=110
        ),
    ]


async def run(
    exchanges: int, sessions: int, root: Path, rate: float | None = None, commit: bool = False
) -> dict[str, float]:
    key, pub = generate_keys(root / "keys")
    rec = Recording(directory=root / "rec", signing_key=key)
    runtime = build_runtime(rec)
    recorder = runtime.recorder
    await runtime.start()
    events = [e for n in range(exchanges) for e in exchange(f"s{n % sessions}", n, 1000.0 + n)]
    waits = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i, e in enumerate(events):
        if rate is not None and i % 6 == 0:  # the next exchange starts on its tick
            await asyncio.sleep(max(0.0, t0 + i / 6 / rate - time.perf_counter()))
        elif rate is not None and i % 6 in (3, 5):  # the response 1 ms after the request, the end after the body
            await asyncio.sleep(0.001)
        while not recorder.emit(e):  # the queue is full: let the recorder catch up (backpressure, nothing lost)
            recorder.lost_events -= 1
            waits += 1
            await asyncio.sleep(0.001)  # not a busy loop: its CPU would be counted as the recorder's
        if commit and i % 6 in (2, 4, 5):  # the gateway's commit points: request upstream, response chunk, end
            await recorder.written()
    await recorder.flushed(within=600)
    written = time.perf_counter() - t0
    await runtime.close()
    total, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    check = audit(runtime.store, load_public_key(pub))
    assert check.findings == [], check.findings[:5]
    assert recorder.written_events == len(events) and recorder.lost_events == 0
    return {
        "events": len(events),
        "written_s": written,
        "total_s": total,
        "events_per_s": len(events) / total,
        "cpu_us_per_event": cpu / len(events) * 1e6,
        "queue_full_waits": waits,
        "segments": check.segments,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def run_sse(mib: int, root: Path) -> dict[str, float]:
    key, pub = generate_keys(root / "keys")
    runtime = build_runtime(Recording(directory=root / "rec", signing_key=key))
    recorder = runtime.recorder
    await runtime.start()
    recorder.emit(ExchangeStart(session="sse", exchange="e", index=0, method="POST", headers=HEADERS))
    await recorder.written()
    text = ("rapid tokenizer words of ordinary text " * 2000)[:64000]
    n = mib * 16
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for i in range(n):
        msg = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": f"{text}{i}"}}
        event = McpResponse(session="sse", exchange="e", index=i + 1, messages=[msg], size=65536, sse_event="message")
        while not recorder.emit(event):
            recorder.lost_events -= 1
            await asyncio.sleep(0.001)
        if i % 16 == 15:
            await recorder.written()
    recorder.emit(ExchangeEnd(session="sse", exchange="e", index=n + 1, status=200, ends_session=True))
    await recorder.written()
    elapsed, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    await runtime.close()
    check = audit(runtime.store, load_public_key(pub))
    assert check.findings == [], check.findings[:5]
    assert recorder.written_events == n + 2 and recorder.lost_events == 0
    return {
        "mib_per_s": mib / elapsed,
        "user_ms_per_mib": (r1.ru_utime - r0.ru_utime) / mib * 1000,
        "system_ms_per_mib": (r1.ru_stime - r0.ru_stime) / mib * 1000,
        "switches_per_mib": (r1.ru_nvcsw - r0.ru_nvcsw) / mib,
        "segments": check.segments,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--exchanges", type=int, default=20_000)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--rate", type=float, default=None, help="exchanges per second (default: as fast as it takes)")
    ap.add_argument("--commit", action="store_true", help="wait at the three commit points of each exchange")
    ap.add_argument("--sse-mib", type=int, default=None, help="one SSE response of this many MiB instead")
    args = ap.parse_args()
    if args.sse_mib:
        with tempfile.TemporaryDirectory() as tmp:
            r = asyncio.run(run_sse(args.sse_mib, Path(tmp)))
        print(f"machine: {os.cpu_count()} CPUs; one SSE response of {args.sse_mib} MiB in 64 KiB events, signed")
        for k, v in r.items():
            print(f"  {k:18} {v:,.2f}" if isinstance(v, float) else f"  {k:18} {v:,}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(run(args.exchanges, args.sessions, Path(tmp), args.rate, args.commit))
    pace = f"{args.rate:g} exchanges/s" if args.rate else "as fast as it takes"
    pace += ", commit points" if args.commit else ""
    print(f"machine: {os.cpu_count()} CPUs; {args.exchanges} exchanges over {args.sessions} sessions, signed, {pace}")
    for k, v in r.items():
        print(f"  {k:18} {v:,.1f}" if isinstance(v, float) else f"  {k:18} {v:,}")


if __name__ == "__main__":
    main()
