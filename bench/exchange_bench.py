"""Our own per-exchange cost, without gRPC or Envoy: the exchange phases driven in-process.

Real ext_proc protobufs (as Envoy sends them), a real Gateway with the example policy, a cached bearer token, a
real recorder chaining, spooling and sealing into a file store. What it prints is the Python work mcp-extproc does
per exchange on top of grpc.aio's own cost; compare with "CPU ms per request" of bench/gateway_bench.py.

    python bench/exchange_bench.py [--exchanges 5000] [--profile]
    python bench/exchange_bench.py --exchanges 2000 --export-and-trace   # off/on alternated: the cost ratio

With ``--export-and-trace`` the same exchanges run alternately without and with the OCSF file export
(extproc/export/) and OpenTelemetry tracing (extproc/telemetry/; every span built, sampled and encoded as OTLP
protobuf by the span shipper's thread, only the network send left out), and it prints the CPU ratio.

``--ab-surface ROUNDS``: tool-surface integrity's cost on tools/call (issue 22: no more than a dict lookup). Runs
without ``gw.surface`` and with it (pins signed with an Ed25519 key, as ``build_surface`` makes them from
``recording.signing_key``) alternate, off on / on off (a drifting shared box favours neither); with it, the session
lists its tools first, so each call finds the definition it was shown and records its fingerprint. Medians.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from extproc.authn.principal import Principal
from extproc.authn.session_binding import bind
from extproc.exchange import Exchange
from extproc.export.config import Export, FileSink
from extproc.export.exporter import attach
from extproc.gateway import Gateway
from extproc.policy.loader import PolicyWatcher
from extproc.recording.setup import build_runtime
from extproc.settings import parse
from extproc.telemetry.config import Telemetry
from extproc.telemetry.tracing import Tracing
from extproc.tools.pins import PinStore
from extproc.tools.surface import Surface

ROOT = Path(__file__).resolve().parents[1]
ALICE = Principal(issuer="https://idp.example", subject="alice", username="alice", groups=("eng",))
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "hi"}}}
RESULT = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "hi"}], "isError": False}}
LIST = {"jsonrpc": "2.0", "id": 6, "method": "tools/list"}
TOOLS = {
    "jsonrpc": "2.0",
    "id": 6,
    "result": {
        "tools": [
            {
                "name": name,
                "description": f"Return the text unchanged ({name}).",
                "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]},
            }
            for name in ("echo", "add", "search")
        ]
    },
}


class CachedAuth:
    """Stands in for the Authenticator's cache hit: the token was verified on an earlier request."""

    async def authenticate(self, authorization: str | None) -> Principal:
        return ALICE


def _headers(values: dict[str, str], end: bool = False) -> ep.HttpHeaders:
    hm = base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()])
    return ep.HttpHeaders(headers=hm, end_of_stream=end)


def _no_network(data: bytes) -> None:
    """What the OTLP/HTTP exporter does after encoding: the POST, left out (the spans are encoded as for a send)."""


async def run(
    exchanges: int,
    workdir: Path,
    profile: bool,
    observed: bool | str = False,
    sample_ratio: float = 1.0,
    encrypt: bool = False,
    surface: bool = False,
    spacing: float = 0.0,
    sessions: int = 1,
    record: bool = True,
    extra: dict[str, object] | None = None,
    upstream: float = 0.0,
    mix: str = "bench",
    seal_blocks: dict[bool, list[float]] | None = None,
) -> dict[str, float]:
    recording: dict[str, object] = {"directory": str(workdir / "rec"), **(extra or {})}
    if not record:  # attribution only: the server is not recorded at all
        recording.update(servers={"demo": "off"}, off_acknowledged="bench attribution")
    if encrypt:  # payloads sealed per subject (recording/shred.py), data keys wrapped by a key file
        (workdir / "kek").write_text("ab" * 32)
        recording.update(encrypt_payloads="per_subject", payload_keys={"kek_file": str(workdir / "kek")})
    settings = parse(
        {
            "servers": [{"name": "demo", "upstream": "127.0.0.1:9"}, {"name": "github", "upstream": "127.0.0.1:9"}],
            "recording": recording,
            "auth": {"public_url": "https://gw.example", "issuers": [{"issuer": "https://idp.example"}]},
            "policy": {"directory": str(ROOT / "policies")},
        }
    )
    runtime = build_runtime(settings.recording)
    await runtime.start()
    policy = PolicyWatcher(ROOT / "policies", {"demo", "github"})
    gw = Gateway.build(settings, runtime.recorder, CachedAuth(), policy)  # type: ignore[arg-type]
    exporter = tracing = None
    # observed: True or "both" = SIEM export to a file and a span tree per exchange; "export" or "trace": one of them
    if observed in (True, "both", "export"):
        export = Export(file=FileSink(path=workdir / "ocsf.jsonl"))
        exporter = attach(export, runtime.recorder.streams)
    if observed in (True, "both", "trace"):
        telemetry = Telemetry(endpoint="http://127.0.0.1:4318/v1/traces", sample_ratio=sample_ratio)
        tracing = gw.tracing = Tracing(telemetry, post=_no_network)
    heads = [
        _headers(
            {
                ":method": "POST",
                ":path": "/demo/mcp",
                ":authority": "gw",
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
                "authorization": "Bearer x" * 40,
                "mcp-session-id": bind(f"sess-{k + 1}", ALICE, gw.options.session_key, "demo/"),
            }
        )
        for k in range(sessions)
    ]
    req_headers, session = heads[0], bind("sess-1", ALICE, gw.options.session_key, "demo/")
    req_body = ep.HttpBody(body=json.dumps(CALL).encode(), end_of_stream=True)
    resp_heads = [
        _headers({":status": "200", "content-type": "text/event-stream", "mcp-session-id": f"sess-{k + 1}"})
        for k in range(sessions)
    ]
    resp_body = ep.HttpBody(body=f"event: message\ndata: {json.dumps(RESULT)}\n\n".encode(), end_of_stream=True)
    if surface:  # tool-surface integrity on, and the session has listed its tools (--ab-surface)
        key = Ed25519PrivateKey.generate()
        gw.surface = Surface(PinStore(workdir / "pins", key.public_key(), key))
        ex = Exchange(gw)
        await ex.on_request_headers(req_headers)
        await ex.on_request_body(ep.HttpBody(body=json.dumps(LIST).encode(), end_of_stream=True))
        await ex.on_response_headers(
            _headers({":status": "200", "content-type": "application/json", "mcp-session-id": "sess-1"})
        )
        await ex.on_response_body(ep.HttpBody(body=json.dumps(TOOLS).encode(), end_of_stream=True))
        ((unit, shown),) = gw.surface.units.items()
        assert any(name == "echo" for _, _, name in shown.last), f"{unit}: the tools/list was not reviewed"

    bench_plan = [(heads[k], req_body, resp_heads[k], (resp_body,)) for k in range(sessions)]
    plan = bench_plan if mix == "bench" else _gateway_mix(session, exchanges)
    if spacing:  # low rate: warm every session (first-call caches, streams, spool folders) outside the window
        for k in range(2 * sessions):
            ex = Exchange(gw)
            await ex.on_request_headers(heads[k % sessions])
            await ex.on_request_body(req_body)
            await ex.on_response_headers(resp_heads[k % sessions])
            await ex.on_response_body(resp_body)
        await runtime.recorder.flushed(within=60)
        await asyncio.sleep(2 * spacing)
    prof = cProfile.Profile(time.thread_time) if profile else None  # CPU of the loop thread, not wall
    refused = 0
    cpu0, main0 = time.process_time(), time.thread_time()
    if prof:
        prof.enable()
    recorder: Any = runtime.recorder  # a BoundedRecorder: its sealer
    sealer, block_cpu = recorder.sealer, time.process_time()
    t0 = time.monotonic()
    for n in range(exchanges):
        rq_headers, rq_body, rs_headers, rs_bodies = plan[n % len(plan)]
        if seal_blocks is not None and n % SEAL_BLOCK == 0:  # --ab-seal: sealing toggled per block, ABBA
            if n:
                seal_blocks[recorder.sealer is not None].append((time.process_time() - block_cpu) * 1000)
            block = n // SEAL_BLOCK
            recorder.sealer = sealer if (block % 2 == 0) == (block // 2 % 2 == 0) else None
            block_cpu = time.process_time()
        ex = Exchange(gw)
        await ex.on_request_headers(rq_headers)
        if ex.refused:  # the recorder not accepting (a loaded box): answered 503 at admission, as the gateway would
            refused += 1
            await asyncio.sleep(0.001)
            continue
        await ex.on_request_body(rq_body)
        if upstream:  # the server's answer takes this long (the gateway's exchanges wait between the two halves)
            await asyncio.sleep(upstream)
        await ex.on_response_headers(rs_headers)
        for chunk in rs_bodies:
            await ex.on_response_body(chunk)
        # the recorder task runs between exchanges, as between gRPC messages; --spacing: open loop, n / rate
        await asyncio.sleep(max(0.0, t0 + (n + 1) * spacing - time.monotonic()) if spacing else 0)
        while not runtime.recorder.accepting:  # noqa: ASYNC110 (back-pressure: where the gateway would answer 503)
            await asyncio.sleep(0.001)
    await runtime.recorder.flushed(within=60)
    if exporter is not None:
        await exporter.close(drain_within=60)  # every OCSF event written
    if tracing is not None:
        tracing.shutdown()  # every span encoded
    if prof:
        prof.disable()
    cpu = time.process_time() - cpu0  # every thread of the process: the export's and the span processor's too
    main = time.thread_time() - main0  # the event loop's thread alone
    await runtime.close()
    await policy.close()
    if prof:
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats(os.environ.get("BENCH_SORT", "cumulative")).print_stats(
            int(os.environ.get("BENCH_TOP", "20"))
        )
        print(out.getvalue())
    if refused:
        print(f"{refused} of {exchanges} exchanges refused at admission (recorder not accepting)")
    done = max(1, exchanges - refused)
    return {
        "exchanges": exchanges - refused,
        "cpu_ms_per_exchange": cpu * 1000 / done,
        "loop_ms_per_exchange": main * 1000 / done,
    }


def _gateway_mix(session: str, exchanges: int) -> list[tuple[ep.HttpHeaders, ep.HttpBody, ep.HttpHeaders, tuple]]:
    """``--mix gateway``: what ``gateway_bench.py`` sends through Envoy, as Envoy hands it over. JSON and SSE calls
    alternate; the SSE answer holds two progress notifications and the result (three events, one body chunk and
    Envoy's empty end); the headers are Envoy's (its own added: x-forwarded-proto, x-request-id, a new one per
    exchange, x-envoy-expected-rq-timeout-ms; the response's x-envoy-upstream-service-time)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from gateway_bench import JSON_CALL, JSON_RESULT, SSE_CALL, SSE_EVENTS

    plan = []
    for i in range(exchanges):
        sse = i % 2 == 1
        call = SSE_CALL.replace(b"slow_echo", b"echo") if sse else JSON_CALL  # both allowed by the example policy
        request = {
            ":authority": "bench", ":path": "/demo/mcp", ":method": "POST", ":scheme": "http",
            "content-type": "application/json", "accept": "application/json, text/event-stream",
            "authorization": "Bearer " + "x" * 600, "mcp-session-id": session,
            "x-bench-response": "sse" if sse else "json", "content-length": str(len(call)),
            "x-forwarded-proto": "http", "x-request-id": f"6b1f3c1e-0c0e-4c5e-9a1d-{i:012d}",
            "x-envoy-expected-rq-timeout-ms": "60000",
        }  # fmt: skip
        kind = "text/event-stream" if sse else "application/json"
        response = {":status": "200", "content-type": kind, "mcp-session-id": "sess-1", "date": "Tue, 08 Dec 2026",
                    "x-envoy-upstream-service-time": "1"}  # fmt: skip
        if sse:
            response["cache-control"] = "no-cache"
            bodies = (ep.HttpBody(body=b"".join(SSE_EVENTS)), ep.HttpBody(body=b"", end_of_stream=True))
        else:
            response["content-length"] = str(len(JSON_RESULT))
            bodies = (ep.HttpBody(body=JSON_RESULT, end_of_stream=True),)
        plan.append((_headers(request), ep.HttpBody(body=call, end_of_stream=True), _headers(response), bodies))
    return plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--exchanges", type=int, default=5000)
    parser.add_argument("--profile", action="store_true", help="print the top extproc functions (slows it down)")
    parser.add_argument(
        "--mix",
        choices=("bench", "gateway"),
        default="bench",
        help="bench: one tools/call with a one-event SSE answer; gateway: gateway_bench.py's JSON/SSE mix and headers",
    )
    parser.add_argument(
        "--export-and-trace",
        action="store_true",
        help="compare with OCSF file export and tracing on (off, on, off, on)",
    )
    parser.add_argument("--sample-ratio", type=float, default=1.0, help="telemetry.sample_ratio for --export-and-trace")
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds for --export-and-trace")
    parser.add_argument("--encrypt", action="store_true", help="recording.encrypt_payloads: per_subject")
    parser.add_argument(
        "--ab-surface", type=int, default=0, metavar="ROUNDS", help="tool surface off/on ROUNDS times; the ratio"
    )
    parser.add_argument("--spacing", type=float, default=0.0, help="s between exchange starts (0.1: 10 req/s)")
    parser.add_argument("--sessions", type=int, default=1, help="sessions the exchanges rotate over (gateway: 16)")
    parser.add_argument("--no-record", action="store_true", help="recording.servers demo: off (attribution)")
    parser.add_argument(
        "--upstream-ms", type=float, default=0.0, help="ms between request and response (with --spacing)"
    )
    parser.add_argument(
        "--recording", action="append", default=[], metavar="KEY=JSON", help="a recording: key (repeatable)"
    )
    parser.add_argument(
        "--ab-encrypt", type=int, default=0, metavar="ROUNDS", help="alternate off/on ROUNDS times; print the ratio"
    )
    parser.add_argument(
        "--ab-seal", action="store_true", help="one encrypted run, sealing toggled every 50 exchanges; the ratio"
    )
    args = parser.parse_args()
    if args.export_and_trace:
        return compare(args.exchanges, args.sample_ratio, args.rounds)
    if args.ab_seal:
        ab_seal(args.exchanges)
        return
    if args.ab_encrypt:
        ab_encrypt(args.exchanges, args.ab_encrypt)
        return
    if args.ab_surface:
        ab_surface(args.exchanges, args.ab_surface)
        return
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(
            run(
                args.exchanges, Path(tmp), args.profile, encrypt=args.encrypt, spacing=args.spacing,
                sessions=args.sessions, record=not args.no_record,
                extra={k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.recording)},
                upstream=args.upstream_ms / 1000, mix=args.mix,
            )
        )  # fmt: skip
    print(
        f"{result['exchanges']} exchanges (auth cache hit, example policy, redaction, recording with signed "
        f"segments): {result['cpu_ms_per_exchange']:.3f} ms CPU per exchange in mcp-extproc's own code "
        f"({result['loop_ms_per_exchange']:.3f} ms on the event loop's thread)"
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "exchange.json").write_text(json.dumps(result, indent=2))


def compare(exchanges: int, sample_ratio: float, rounds: int = 4) -> None:
    """Off and on alternated in one process (off on / on off: a drifting shared box favours neither), each run in a
    fresh temp store: the median CPU per exchange of each and their ratio; then export alone and tracing alone."""
    modes = ("off", "both", "export", "trace")
    runs: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(rounds):
        for mode in modes if r % 2 == 0 else modes[::-1]:
            with tempfile.TemporaryDirectory() as tmp:
                observed: bool | str = False if mode == "off" else mode
                result = asyncio.run(run(exchanges, Path(tmp), False, observed, sample_ratio))
                runs[mode].append(round(result["cpu_ms_per_exchange"], 3))
    med = {m: statistics.median(v) for m, v in runs.items()}
    off = med["off"]
    out = {"exchanges": exchanges, "sample_ratio": sample_ratio, "rounds": rounds, "median_ms": med, "runs": runs}
    out["ratio"] = {m: round(med[m] / off, 3) for m in modes}
    print(
        f"{exchanges} exchanges x{rounds} rounds, sample_ratio {sample_ratio}: {off:.3f} ms CPU per exchange with "
        f"export and tracing off, {med['both']:.3f} ms with both on (x{med['both'] / off:.3f}); export alone "
        f"x{med['export'] / off:.3f}, tracing alone x{med['trace'] / off:.3f} (medians; runs {runs})"
    )
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    name = "exchange_export_trace.json" if sample_ratio == 1.0 else f"exchange_export_trace_{sample_ratio:g}.json"
    (results / name).write_text(json.dumps(out, indent=2))


def ab_encrypt(exchanges: int, rounds: int) -> None:
    """Payload encryption's CPU per exchange: off and on alternated in one process (a shared box drifts; the ratio
    of neighbouring runs drifts less), ordered off on / on off so that a drifting load favours neither, each in a
    fresh temp store. Medians."""
    got: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for encrypt in (False, True) if r % 2 == 0 else (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                got[encrypt].append(
                    asyncio.run(run(exchanges, Path(tmp), False, encrypt=encrypt))["cpu_ms_per_exchange"]
                )
    off, on = statistics.median(got[False]), statistics.median(got[True])
    print(f"off {[round(x, 3) for x in got[False]]} ms, per_subject {[round(x, 3) for x in got[True]]} ms")
    print(
        f"median: off {off:.3f} ms, per_subject {on:.3f} ms CPU per exchange: x{on / off:.3f} ({(on / off - 1):+.1%})"
    )


SEAL_BLOCK = 50  # exchanges per block of --ab-seal


def ab_seal(exchanges: int) -> None:
    """Sealing's CPU per exchange, toggled every ``SEAL_BLOCK`` exchanges of one run (on off off on ...): drift on a
    shared box cancels far better than between whole runs. Encryption configured throughout; "off" blocks only
    skip ``PayloadSealer.seal`` (the recorder's sealer set to None). CPU of each block, medians per exchange."""
    blocks: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(run(exchanges, Path(tmp), False, encrypt=True, seal_blocks=blocks))
    off, on = (statistics.median(blocks[k]) / SEAL_BLOCK for k in (False, True))
    print(f"{len(blocks[True])} + {len(blocks[False])} blocks of {SEAL_BLOCK} exchanges, sealing on / off")
    print(f"median: off {off:.3f} ms, sealed {on:.3f} ms CPU per exchange: x{on / off:.3f} ({on / off - 1:+.1%}), "
          f"+{(on - off) * 1000:.1f} us")  # fmt: skip


def ab_surface(exchanges: int, rounds: int) -> None:
    """Tool-surface integrity's CPU per tools/call exchange: off and on alternated in one process, each run in a
    fresh temp store, ordered off on / on off so that a drifting load favours neither."""
    got: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for on in (False, True) if r % 2 == 0 else (True, False):
            with tempfile.TemporaryDirectory() as tmp:
                got[on].append(asyncio.run(run(exchanges, Path(tmp), False, surface=on))["cpu_ms_per_exchange"])
    off, on_ms = statistics.median(got[False]), statistics.median(got[True])
    print(f"off {[round(x, 3) for x in got[False]]} ms, on {[round(x, 3) for x in got[True]]} ms")
    print(f"median: off {off:.3f} ms, surface on {on_ms:.3f} ms CPU per exchange: x{on_ms / off:.3f} "
          f"({(on_ms / off - 1):+.1%})")  # fmt: skip


if __name__ == "__main__":
    main()
