"""Run the official MCP conformance suite against a server directly and through the gateway, and compare.

Every scenario must give the same result both ways (each check id with the same status), first through an
anonymous gateway, then through one with auth and an allow-everything policy (the suite cannot send a token, so
a loopback proxy adds one). Then every request Envoy received must be in the recordings, and every recorded
session must verify (hash chains, manifests, signatures). Prints a table; exits 1 on any difference that is not
listed with its reason in expected-differences.yaml (``--strict``: on any difference at all).

    python tests/conformance/run.py [--reference DIR] [--legs 2025-11-25,2026-07-28,all] [--modes anonymous,auth]
                                    [--work DIR] [--strict]

``--reference DIR`` (or ``$MCP_CONFORMANCE_REFERENCE``) is the folder of the suite's reference server
(``examples/servers/typescript`` of the conformance repository); without it, the project's fixture server.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import compare
import parts
import suite

from extproc.authn.dev_issuer import DevIssuer
from extproc.recording.manifest import load_public_key
from extproc.recording.replay import load_session
from extproc.recording.store.file import FileStore

GATEWAY_MODES = ("anonymous", "auth")
MESSAGE_EVENTS = ("mcp.request", "mcp.response")


@dataclass
class RecordingCheck:
    """What the gateway recorded in one mode, checked against what Envoy saw."""

    mode: str
    envoy_requests: int
    recorded_exchanges: int = 0
    sessions: int = 0
    open_streams: int = 0
    messages: int = 0  # JSON-RPC messages recorded, both directions
    unrecorded_refusals: dict[str, int] = field(default_factory=dict)  # refused before admission, by reason
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Outcome:
    """Per leg and mode: ``{scenario: Result}``; ``direct`` is the reference every gateway mode is compared to."""

    results: compare.Results = field(default_factory=dict)
    recordings: list[RecordingCheck] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def check_recordings(gw: parts.Gateway, mode: str, envoy_requests: int, refusals: dict[str, int]) -> RecordingCheck:
    """Every recorded session verifies (signatures too), and every request Envoy received is accounted for.

    The gateway records every exchange it admits; what it refuses before admission (unknown path, foreign
    Origin, no valid token) is only logged and counted, by design. So: requests through Envoy = exchanges
    recorded + refusals counted but not recorded.
    """
    check = RecordingCheck(mode, envoy_requests)
    store = FileStore(gw.recordings)
    key = load_public_key(gw.public_key)
    recorded_refusals: dict[str, int] = {}
    for name in store.list_sessions():
        session = load_session(store, name, key)
        check.sessions += 1
        check.open_streams += len(session.unfinished)
        check.problems += [f"{session.id}: {p}" for p in session.problems]
        for exchange, events in session.exchanges.items():
            if not exchange:  # session-level events (e.g. the completer's), not part of an exchange
                continue
            kinds = {e.get("type") for e in events}
            end = next((e for e in events if e.get("type") == "exchange.end"), None)
            check.recorded_exchanges += "exchange.start" in kinds
            check.messages += sum(len(e.get("messages") or []) for e in events if e.get("type") in MESSAGE_EVENTS)
            if end is None:
                check.problems.append(f"{session.id}: exchange {exchange} has no recorded end")
            elif end.get("outcome") == "denied":
                reason = str(end.get("detail", "")).split(":", 1)[0]
                recorded_refusals[reason] = recorded_refusals.get(reason, 0) + 1
            elif end.get("outcome") == "complete" and "http.response" not in kinds:
                check.problems.append(f"{session.id}: exchange {exchange} completed with no recorded response")
    for reason, count in refusals.items():
        if count > recorded_refusals.get(reason, 0):
            check.unrecorded_refusals[reason] = count - recorded_refusals.get(reason, 0)
    accounted = check.recorded_exchanges + sum(check.unrecorded_refusals.values())
    if accounted != envoy_requests:
        check.problems.append(
            f"Envoy received {envoy_requests} requests; {check.recorded_exchanges} recorded + "
            f"{sum(check.unrecorded_refusals.values())} refused before admission = {accounted}"
        )
    return check


def run(reference: Path | None, legs: list[str], modes: list[str], work: Path) -> tuple[Outcome, parts.ServerUnderTest]:
    """Start the parts, run every leg directly then through each gateway mode; always stop what was started."""
    suite.ensure_installed()
    outcome = Outcome()
    server_log = work / "server.log"
    server = parts.start_reference(reference, server_log) if reference else parts.start_fixture(server_log)
    try:
        started = time.monotonic()
        for leg in legs:
            outcome.results[(leg, "direct")] = suite.run_leg(leg, server.url, work / "direct" / leg, work / "suite.log")
        outcome.seconds["direct"] = time.monotonic() - started
        for mode in modes:
            started = time.monotonic()
            outcome.recordings.append(_through_gateway(server, mode, legs, work, outcome))
            outcome.seconds[mode] = time.monotonic() - started
    finally:
        server.stop()
    return outcome, server


def _through_gateway(
    server: parts.ServerUnderTest, mode: str, legs: list[str], work: Path, outcome: Outcome
) -> RecordingCheck:
    issuer: DevIssuer | None = None
    gw: parts.Gateway | None = None
    try:
        if mode == "auth":
            issuer = DevIssuer(work / "issuer").start()
        gw = parts.start_gateway(server, work / mode, issuer.url if issuer else None)
        if issuer is not None:
            parts.start_token_proxy(gw, issuer.mint("conformance", aud=gw.config["auth"]["public_url"], ttl=3600))
        for leg in legs:
            outcome.results[(leg, mode)] = suite.run_leg(leg, gw.url, work / mode / "suite" / leg, work / "suite.log")
        envoy_requests, refusals = gw.downstream_requests(), gw.refusals()
        gw.stop()  # flushes the recordings
        return check_recordings(gw, mode, envoy_requests, refusals)
    finally:
        if gw is not None:
            gw.stop()
        if issuer is not None:
            issuer.stop()


def report(outcome: Outcome, legs: list[str], modes: list[str], expected: compare.Expected) -> tuple[str, bool]:
    """The comparison table, the differences (unexpected, known, stale) and the recording checks; all good?"""
    every_leg = set(legs) == set(suite.LEGS)
    verdict = compare.judge(outcome.results, legs, modes, expected, stale=every_leg)
    lines = compare.table(outcome.results, legs, modes, verdict)
    lines += ["", f"unexpected differences: {len(verdict.unexpected)}"]
    lines += [f"  {d.describe()}" for d in verdict.unexpected]
    checked = "" if every_leg else " (not checked: run every leg for that)"
    lines += [f"stale entries in {compare.EXPECTED_FILE.name}: {len(verdict.stale)}{checked}"]
    lines += [f"  {s}" for s in verdict.stale]
    lines += [f"known differences (listed in {compare.EXPECTED_FILE.name}): {len(verdict.expected)}"]
    lines += [f"  {d.describe()}\n    why: {' / '.join(why)}" for d, why in verdict.expected]
    lines.append("")
    for rec in outcome.recordings:
        lines.append(
            f"recordings [{rec.mode}]: {'ok' if rec.ok else 'FAIL'}: {rec.envoy_requests} requests through Envoy, "
            f"{rec.recorded_exchanges} exchanges ({rec.messages} JSON-RPC messages, both directions) recorded in "
            f"{rec.sessions} sessions; every exchange ended, every chain and signature checked "
            f"({rec.open_streams} streams still open at stop)"
        )
        if rec.unrecorded_refusals:
            why = ", ".join(f"{reason} {n}" for reason, n in sorted(rec.unrecorded_refusals.items()))
            lines.append(f"  refused before admission (counted, not recorded, by design): {why}")
        lines += [f"  {p}" for p in rec.problems[:20]]
    return "\n".join(lines), verdict.ok and all(rec.ok for rec in outcome.recordings)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, default=os.environ.get("MCP_CONFORMANCE_REFERENCE") or None)
    parser.add_argument("--legs", default=",".join(suite.LEGS))
    parser.add_argument("--modes", default=",".join(GATEWAY_MODES))
    parser.add_argument("--work", type=Path, help="keep logs, suite results and recordings here")
    parser.add_argument(
        "--strict", action="store_true", help=f"ignore {compare.EXPECTED_FILE.name}: any difference fails"
    )
    args = parser.parse_args(argv)
    legs = args.legs.split(",")
    modes = args.modes.split(",")
    for name, chosen, known in (("leg", legs, suite.LEGS), ("mode", modes, GATEWAY_MODES)):
        unknown = [c for c in chosen if c not in known]
        if unknown:
            parser.error(f"unknown {name} {unknown[0]!r}; choose from {', '.join(known)}")
    expected = {} if args.strict else compare.load_expected()
    work = args.work or Path(tempfile.mkdtemp(prefix="conformance-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    outcome, server = run(args.reference, legs, modes, work)
    text, ok = report(outcome, legs, modes, expected.get(server.kind, {}))
    print(f"conformance suite {suite.version()} on Node {suite.node_version()}; server: {server.description}")
    print(f"logs, suite results and recordings: {work}")
    print(text)
    timing = ", ".join(f"{k} {v:.0f}s" for k, v in outcome.seconds.items())
    print(f"\ntime: {time.monotonic() - started:.0f}s ({timing})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
