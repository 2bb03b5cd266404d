"""Concurrency soak: N MCP sessions at once through 2 processor workers (and the traffic other scenarios reuse)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.faults.client import Client, Tally
from bench.faults.harness import Outcome, Rig, RssSampler, verify_store

# sessions, seconds, think time between a session's calls (s, ±50%): at full scale 1,000 sessions stay open and
# call like agents do (a call, then a few seconds of thinking); small runs closed-loop, as fast as answered.
SCALES = {"small": (50, 20.0, 0.0), "full": (1000, 180.0, 3.0)}
# The soak records with gateway.yaml's defaults (the other scenarios flush every 50 ms and cut segments every
# 500 ms, as the integration tests do, so that faults meet sealed and shipped segments within seconds).
PRODUCTION_RECORDING = {"flush_interval_ms": 200, "segment_max_age_ms": 2000}


@dataclass
class Mix:
    """The soak's traffic: 2025 sessions and 2026-07-28 stateless requests, SSE and JSON servers, allowed and
    denied calls (``add`` is denied by rule, a caller without the eng group by default deny)."""

    rig: Rig
    client: Client
    servers: list[str]
    deadline: float
    think_s: float = 0.0
    stop: Callable[[], bool] = lambda: False

    async def one(self, i: int) -> None:
        rig, c = self.rig, self.client
        url = rig.url(self.servers[i % len(self.servers)])
        groups = [] if i % 10 == 9 else ["eng"]
        token = rig.token(f"user-{i}", groups)
        stateless = i % 4 == 3
        headers = None if stateless else await c.open_session(url, token)
        if not stateless and headers is None:
            return
        n = 0
        while time.monotonic() < self.deadline and not self.stop():
            n += 1
            tool, args = ("add", {"a": 1, "b": 2}) if n % 5 == 0 else ("echo", {"text": f"s{i}-{n}"})
            if headers is None:
                await c.stateless_call(url, token, tool, args)
            else:
                await c.call(url, headers, tool, args)
            if self.think_s:
                await asyncio.sleep(self.think_s * random.uniform(0.5, 1.5))
        if headers is not None:
            self.sessions.append(headers["mcp-session-id"])

    sessions: list[str] = None  # type: ignore[assignment]

    async def run(self, n: int) -> None:
        self.sessions = []
        await asyncio.gather(*(self.one(i) for i in range(n)))


def start_rig(name: str, workers: int = 2, **gateway: object) -> Rig:
    rig = Rig(name, workers=workers)
    try:
        rig.mcp_server("demo")  # SSE responses
        rig.mcp_server("demojson", True)
        rig.gateway(**gateway)  # type: ignore[arg-type]
    except BaseException:
        rig.close()
        raise
    return rig


def run(scale: str) -> Outcome:
    sessions, seconds, think = SCALES[scale]
    out = Outcome("soak", scale)
    rig = start_rig("soak", recording=PRODUCTION_RECORDING)
    try:
        sampler = RssSampler(rig.stack).start()  # type: ignore[arg-type]
        tally = Tally()

        async def drive() -> Mix:
            client = Client(tally)
            mix = Mix(rig, client, ["demo", "demojson"], time.monotonic() + seconds, think_s=think)
            try:
                await mix.run(sessions)
            finally:
                await client.close()
            return mix

        t0 = time.monotonic()
        mix = asyncio.run(drive())
        elapsed = time.monotonic() - t0
        sampler.stop()
        rig.stop_gateway()
        v = verify_store(rig)
        out.check_recordings(rig, v)
        five = tally.undeliberate_5xx
        out.check(five == 0, f"{five} responses 5xx other than the gateway's deliberate refusals: {tally.five_xx}")
        out.check(not tally.errors, f"transport errors {dict(tally.errors)}")
        missing = [s for s in mix.sessions if not v.has_session(s)]
        out.check(not missing, f"{len(missing)} sessions not recorded: {missing[:3]}")
        unrecorded = tally.answered - v.ended_texts
        out.check(not unrecorded, f"{len(unrecorded)} answered calls not recorded to their end: {list(unrecorded)[:3]}")
        # every response but the deliberate refusals (the recorder's back-pressure, load shedding: refused before
        # anything could be recorded) is an exchange
        answered = tally.requests - tally.refused - tally.shed
        out.check(v.exchanges == answered, f"{v.exchanges} exchanges recorded for {answered} responses")
        out.check(tally.denied > 0, "no call was denied (the mix must include denials)")
        out.figures.update(
            concurrent=sessions,
            seconds=round(elapsed),
            requests=tally.requests,
            req_per_s=round(tally.requests / elapsed),
            p50_ms=round(tally.percentile(0.5)),
            p99_ms=round(tally.percentile(0.99)),
            answered=len(tally.answered),
            denied=tally.denied,
            statuses=dict(tally.statuses),
            processor_rss_mib=sampler.over_time(),
            envoy_rss_mib_max=round(max(e for _, _, e in sampler.samples) / 1024),
        )
        out.summary = (
            f"{sessions} concurrent ({len(mix.sessions)} 2025 sessions + stateless 2026-07-28 callers): "
            f"{tally.line(elapsed)}; processor RSS (2 workers, MiB) {sampler.over_time()}"
        )
    finally:
        rig.close()
    return out
