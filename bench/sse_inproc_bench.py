"""A large SSE response through our own code only: CPU per MiB of the exchange's body path, without gRPC or Envoy.

The same body as bench/sse_bench.py (JSON-RPC events of about 64 KiB, ordinary words some of which the built-in
redactions look at, then the tools/call result), handed to ``Exchange.on_response_body`` in messages of about
1 MiB, as Envoy hands them to the processor once the processor is the slower side. A real Gateway with the bench
policy of bench/gateway_bench.py's scenario B (``--example-policy``: policies/, whose own redaction patterns, an
e-mail address pattern among them, run too), a cached bearer token, a real recorder chaining, spooling, sealing and
signing into a file store. Prints CPU (``process_time``: every thread of the process) per MiB, for the whole path
and for the recorder's share after the last message (``flushed``). Shared boxes: read ratios of runs taken in turn.

    python bench/sse_inproc_bench.py [--mb 50] [--rounds 3] [--unicode] [--profile]

For an A/B against another tree: run this file from a copy of that tree (it imports the tree it lives in).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep  # noqa: E402

from bench.exchange_bench import CALL, _headers  # noqa: E402
from bench.gateway_bench import BENCH_GROUP, POLICY  # noqa: E402
from bench.sse_bench import make_events  # noqa: E402
from extproc.authn.principal import Principal  # noqa: E402
from extproc.authn.session_binding import bind  # noqa: E402
from extproc.exchange import Exchange  # noqa: E402
from extproc.gateway import Gateway  # noqa: E402
from extproc.policy.loader import PolicyWatcher  # noqa: E402
from extproc.recording.manifest import generate_keys  # noqa: E402
from extproc.recording.setup import build_runtime  # noqa: E402
from extproc.settings import parse  # noqa: E402

MIB = 1 << 20
WHO = Principal(issuer="https://idp.example", subject="bench-user-0", username="bench-user-0", groups=(BENCH_GROUP,))


class CachedAuth:
    """Stands in for the Authenticator's cache hit: the token was verified on an earlier request."""

    async def authenticate(self, authorization: str | None) -> Principal:
        return WHO


async def one_stream(workdir: Path, body: bytes, message: int, profile: bool, example: bool) -> dict[str, float]:
    """One exchange answered with ``body`` in ``message``-byte body messages: CPU ms per MiB."""
    key, _ = generate_keys(workdir / "signing")
    policies, server = ROOT / "policies", "demo"
    if not example:
        policies, server = workdir / "policies", "bench"
        policies.mkdir()
        (policies / "bench.yaml").write_text(POLICY)
    settings = parse(
        {
            "servers": [{"name": n, "upstream": "127.0.0.1:9"} for n in ("demo", "github", "bench")],
            "recording": {"directory": str(workdir / "rec"), "signing_key": str(key)},
            "auth": {"public_url": "https://gw.example", "issuers": [{"issuer": "https://idp.example"}]},
            "policy": {"directory": str(policies)},
        }
    )
    runtime = build_runtime(settings.recording)
    await runtime.start()
    policy = PolicyWatcher(policies, {"demo", "github", "bench"})
    gw = Gateway.build(settings, runtime.recorder, CachedAuth(), policy)  # type: ignore[arg-type]
    session = bind("sess-1", WHO, gw.options.session_key, f"{server}/")
    request = {":method": "POST", ":path": f"/{server}/mcp", ":authority": "gw", "content-type": "application/json"}
    request |= {"accept": "application/json, text/event-stream", "authorization": "Bearer x", "mcp-session-id": session}
    response = {":status": "200", "content-type": "text/event-stream", "mcp-session-id": "sess-1"}
    messages = [
        ep.HttpBody(body=body[at : at + message], end_of_stream=at + message >= len(body))
        for at in range(0, len(body), message)
    ]
    prof = cProfile.Profile() if profile else None
    cpu0 = time.process_time()
    if prof:
        prof.enable()
    ex = Exchange(gw)
    await ex.on_request_headers(_headers(request))
    await ex.on_request_body(ep.HttpBody(body=json.dumps(CALL).encode(), end_of_stream=True))
    await ex.on_response_headers(_headers(response))
    for msg in messages:
        await ex.on_response_body(msg)
    cpu1 = time.process_time()
    await runtime.recorder.flushed(within=60)
    cpu2 = time.process_time()
    if prof:
        prof.disable()
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(25)
        print(out.getvalue())
    await runtime.close()
    await policy.close()
    mib = len(body) / MIB
    return {"cpu_ms_per_mib": (cpu2 - cpu0) * 1000 / mib, "after_last_ms_per_mib": (cpu2 - cpu1) * 1000 / mib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--mb", type=int, default=50, help="body size in MB (default 50)")
    parser.add_argument("--message-kib", type=int, default=1018, help="body message size (Envoy's: about 1 MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--unicode", action="store_true", help="one word in eight outside ASCII, as UTF-8")
    parser.add_argument("--profile", action="store_true", help="cProfile the last round (slows it down)")
    parser.add_argument("--example-policy", action="store_true", help="policies/ (its own redaction patterns too)")
    args = parser.parse_args()
    body = b"".join(make_events(args.mb * 1_000_000, 64 << 10, unicode=args.unicode))
    runs = []
    for i in range(args.rounds):
        with tempfile.TemporaryDirectory(prefix="sse-inproc-") as tmp:
            profile = args.profile and i == args.rounds - 1
            runs.append(asyncio.run(one_stream(Path(tmp), body, args.message_kib << 10, profile, args.example_policy)))
    cpu = [r["cpu_ms_per_mib"] for r in runs]
    after = [r["after_last_ms_per_mib"] for r in runs]
    print(
        f"{ROOT.name}: {args.mb} MB {'unicode' if args.unicode else 'ascii'}"
        f"{', example policy' if args.example_policy else ''}: CPU ms/MiB "
        f"{', '.join(f'{c:.2f}' for c in cpu)} (median {statistics.median(cpu):.2f}; after the last message "
        f"{statistics.median(after):.2f})"
    )


if __name__ == "__main__":
    main()
