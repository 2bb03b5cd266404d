"""Slow or failing IdP under load: the JWKS endpoint answers in seconds, then not at all, while traffic runs.

Tokens already verified (cached) and new tokens signed with a known key keep working; the data path never waits
for the identity provider (latency per phase stays flat).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench.faults.client import Client, Tally
from bench.faults.harness import Outcome, Rig, verify_store
from bench.faults.soak import Mix
from extproc.authn.dev_issuer import DevIssuer

SCALES = {"small": (30, 8.0), "full": (200, 40.0)}  # sessions, seconds per phase
JWKS_DELAY_S = 4.0  # under the fetcher's 5 s timeout: the slow answer does arrive
PHASES = ("healthy", "slow", "failing")


def _sources(bodies: list[str]) -> str:
    """Where the first few unexpected 5xx came from, by their body (Envoy's own text, the server's, the gateway's)."""
    return "; ".join(sorted({b[:80] for b in bodies})) or "none"


class FlakyIssuer(DevIssuer):
    """The dev issuer with a JWKS endpoint that can be made slow (``delay``) or failing (``set_jwks_down``)."""

    delay = 0.0

    def respond(self, path: str) -> tuple[int, dict[str, Any]]:
        if path == "/jwks" and self.delay:
            time.sleep(self.delay)  # the issuer's own HTTP thread; the gateway's fetch waits this long
        return super().respond(path)


def run(scale: str) -> Outcome:
    sessions, per_phase = SCALES[scale]
    out = Outcome("idp", scale)
    rig = Rig("idp", issuer_class=FlakyIssuer)
    issuer = rig.issuer
    assert isinstance(issuer, FlakyIssuer)
    try:
        rig.mcp_server("demo")
        rig.mcp_server("demojson", True)
        # refresh every second, so refreshes hit the slow and the failing endpoint many times during the run
        rig.gateway(auth={"jwks_refresh_seconds": 1, "unknown_kid_refetch_seconds": 1})
        tallies = {p: Tally() for p in PHASES}
        phase = ["healthy"]
        fetches: dict[str, int] = {}

        async def drive() -> None:
            client = Client(tallies["healthy"])
            mix = Mix(rig, client, ["demo", "demojson"], time.monotonic() + 3 * per_phase, think_s=0.05)

            async def fresh_tokens() -> None:  # new callers keep arriving: new tokens, known signing key
                n = 0
                while time.monotonic() < mix.deadline:
                    n += 1
                    await client.stateless_call(rig.url("demojson"), rig.token(f"new-{n}"), "echo", {"text": f"n{n}"})
                    await asyncio.sleep(0.1)

            async def switch() -> None:
                for name in PHASES[1:]:
                    await asyncio.sleep(per_phase)
                    fetches[phase[0]] = issuer.jwks_fetches
                    phase[0] = name
                    client.tally = tallies[name]
                    if name == "slow":
                        issuer.delay = JWKS_DELAY_S
                    else:
                        issuer.delay = 0.0
                        issuer.set_jwks_down(True)
                await asyncio.sleep(per_phase)
                fetches[phase[0]] = issuer.jwks_fetches

            try:
                await asyncio.gather(mix.run(sessions), fresh_tokens(), switch())
            finally:
                await client.close()

        asyncio.run(drive())
        issuer.set_jwks_down(False)
        rig.stop_gateway()
        v = verify_store(rig)
        out.check_recordings(rig, v)
        base = tallies["healthy"]
        for name in PHASES:
            t = tallies[name]
            out.check(t.statuses.get(401, 0) == 0, f"{name}: {t.statuses.get(401)} times 401")
            out.check(
                t.undeliberate_5xx == 0,
                f"{name}: {t.undeliberate_5xx} 5xx besides the recorder's refusals: {t.five_xx[:2]}",
            )
            out.check(not t.errors, f"{name}: transport errors {dict(t.errors)}")
            out.check(len(t.answered) > 0, f"{name}: no call answered")
        for name in PHASES[1:]:
            t = tallies[name]
            # flat = no request waits for the IdP: p99 stays far under the JWKS delay and near the healthy phase
            limit = max(3 * base.percentile(0.99), base.percentile(0.99) + 1000)
            out.check(
                t.percentile(0.99) < min(limit, JWKS_DELAY_S * 1000),
                f"{name}: p99 {t.percentile(0.99):.0f} ms vs healthy {base.percentile(0.99):.0f} ms",
            )
        unrecorded = set().union(*(t.answered for t in tallies.values())) - v.responded_texts
        out.check(not unrecorded, f"{len(unrecorded)} answered calls without a recorded response")
        counts = [fetches.get(p, 0) for p in PHASES]
        per = {p: counts[i] - (counts[i - 1] if i else 0) for i, p in enumerate(PHASES)}
        out.check(per["slow"] > 0 and per["failing"] > 0, f"JWKS not fetched during slow/failing phases: {per}")
        out.figures.update(
            sessions=sessions,
            seconds_per_phase=per_phase,
            jwks_delay_s=JWKS_DELAY_S,
            jwks_fetches=per,
            **{f"{p}_p50_ms": round(tallies[p].percentile(0.5)) for p in PHASES},
            **{f"{p}_p99_ms": round(tallies[p].percentile(0.99)) for p in PHASES},
            **{f"{p}_statuses": dict(tallies[p].statuses) for p in PHASES},
        )
        out.summary = f"{sessions} sessions + a new token every 0.1 s; " + "; ".join(
            f"{p}: p50 {tallies[p].percentile(0.5):.0f} / p99 {tallies[p].percentile(0.99):.0f} ms, "
            f"{len(tallies[p].answered)} answered, 503s: {tallies[p].refused} by the recorder's back-pressure, "
            f"{tallies[p].shed} shed by an overloaded worker, {tallies[p].undeliberate_5xx} other 5xx "
            f"({_sources(tallies[p].five_xx)}); JWKS fetched {per[p]} times"
            for p in PHASES
        )
    finally:
        issuer.set_jwks_down(False)
        issuer.delay = 0.0
        rig.close()
    return out
