"""Where a processor's GIL time goes, per phase and per component, from a py-spy raw (folded) profile.

    python bench/profile_summary.py bench/results/profile-authed.txt [--requests N]

The profile is what ``gateway_bench.py --profile`` writes (``PYSPY_ARGS=--gil``: samples of the thread holding the
GIL). Shares are of all samples; with ``--requests`` (the exchanges answered in the profiled window) each line also
says how many milliseconds per exchange that is (one sample = 1/rate s; py-spy's default rate here is 200 Hz).
A component is counted where any frame of the sample's stack matches it (inclusive), so components can overlap
(the access line inside ``finish``); "transport" is what runs with no frame of ours below the event loop: grpc.aio's
Cython callbacks and protobuf (de)serialization (with the standard loop the leaf is ``Handle._run``, with uvloop
``Runner.run``).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

PHASES = {
    "request headers": "Exchange.on_request_headers ",
    "request body": "Exchange.on_request_body ",
    "response headers": "Exchange.on_response_headers ",
    "response body": "Exchange.on_response_body ",
    "end (finish)": "ExchangeState.finish ",
    "stream loop (Processor.Process self)": None,  # the leaf is Processor.Process itself
    "recorder round (off the exchange)": "WriterRound._run ",
}
COMPONENTS = {
    "admission: authn cache, session binding": r"\(extproc/(admission|authn/)",
    "policy decision (authorize, engine)": r"^(authorize|decide_batch|decide) \(extproc/policy/",
    "policy.decision events (record, describe)": r"^Decisions\.record ",
    "redaction (record redactor, scans)": r"\(extproc/policy/redact\.py|^redact(_for_record|_text)? \(",
    "JSON-RPC parsing": r"\(extproc/mcp/jsonrpc\.py",
    "SSE framing, body pieces": r"\(extproc/mcp/(sse|body)\.py|\(extproc/recording/pieces\.py",
    "event building (dataclasses, to_record)": r"\(extproc/recording/events\.py|__create_fn__",
    "event serialization (event_line)": r"^event_line ",
    "chain hashing (Streams.chain)": r"^Streams\.chain ",
    "exchange log (emit, commit wait)": r"\(extproc/recording/exchange_log\.py",
    "access line (logging)": r"^access \(extproc/logs\.py|\(logging/",
    "metrics (prometheus_client)": r"\(prometheus_client/|\(extproc/metrics\.py",
    "protobuf replies (envoy/responses.py)": r"\(extproc/envoy/responses\.py",
    "header maps (envoy/headers.py)": r"\(extproc/envoy/headers\.py",
    "spool and store (recording/spool.py, store/)": r"\(extproc/recording/(spool|store/)",
}


# Leaves with no frame of ours below the loop: the asyncio loop's Handle._run; uvloop's loop is C, so its callbacks
# (grpc.aio's Cython) run with Runner.run / run_until_complete as the last Python frame.
_TRANSPORT_LEAVES = (
    "Handle._run ",
    "Runner.run ",
    "BaseEventLoop.run_until_complete ",
    "BaseEventLoop.run_forever ",
    "PassThrough.Process ",
)


def summarize(path: Path) -> tuple[int, Counter[str], Counter[str], int]:
    """(samples, per phase, per component, transport) of one folded profile."""
    total, transport = 0, 0
    phases: Counter[str] = Counter()
    components: Counter[str] = Counter()
    patterns = {name: re.compile(p) for name, p in COMPONENTS.items()}
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        if leaf.startswith("Processor.Process "):
            phases["stream loop (Processor.Process self)"] += n
        if leaf.startswith(_TRANSPORT_LEAVES):
            transport += n
        for name, marker in PHASES.items():
            if marker is not None and any(f.startswith(marker) for f in frames):
                phases[name] += n
        for name, pattern in patterns.items():
            if any(pattern.search(f) for f in frames):
                components[name] += n
    return total, phases, components, transport


def report(path: Path, requests: int = 0, rate: int = 200) -> str:
    """The table: each share of the samples, and with ``requests`` the milliseconds per exchange it stands for."""
    total, phases, components, transport = summarize(path)

    def line(name: str, n: int) -> str:
        ms = f"{n * 1000 / rate / requests:7.3f} ms" if requests else ""
        return f"  {name:<48}{100 * n / max(total, 1):6.1f} %{ms}"

    lines = [f"{path}: {total} samples", line("transport (no frame of ours: grpc.aio, protobuf)", transport)]
    lines.append("per phase (inclusive):")
    lines += [line(name, phases[name]) for name in PHASES]
    lines.append("per component (inclusive, may overlap):")
    lines += [line(name, components[name]) for name in COMPONENTS]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--requests", type=int, default=0, help="exchanges answered in the profiled window")
    parser.add_argument("--rate", type=int, default=200, help="py-spy's sampling rate (Hz)")
    args = parser.parse_args()
    print(report(args.profile, args.requests, args.rate))


if __name__ == "__main__":
    main()
