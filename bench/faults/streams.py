"""Long SSE streams: N GET streams of 2025 sessions held open at once; no 503 from circuit breakers; memory/stream."""

from __future__ import annotations

import asyncio
import time

import aiohttp

from bench.faults.client import Client, Tally
from bench.faults.harness import Outcome, Rig, RssSampler, verify_store

SCALES = {"small": (200, 15.0), "full": (2000, 60.0)}


def run(scale: str) -> Outcome:
    streams, hold = SCALES[scale]
    out = Outcome("sse-streams", scale)
    rig = Rig("streams")
    try:
        rig.mcp_server("demo")
        rig.gateway()
        url = rig.url("demo")
        sampler = RssSampler(rig.stack)  # type: ignore[arg-type]
        tally, opened, held, ended_early = Tally(), [], [0], [0]

        async def drive() -> dict[str, float]:
            client = Client(tally, timeout=hold + 300)
            gate = asyncio.Semaphore(64)
            token = rig.token("streamer")

            async def session() -> dict[str, str] | None:
                async with gate:
                    return await client.open_session(url, token)

            sessions = [h for h in await asyncio.gather(*(session() for _ in range(streams))) if h]
            before = sampler.sample()
            stop = asyncio.Event()
            all_open = asyncio.Event()

            settled = [0]

            def settle() -> None:
                settled[0] += 1
                if settled[0] == len(sessions):
                    all_open.set()

            async def stream(headers: dict[str, str]) -> None:
                get = {k: v for k, v in headers.items() if k != "content-type"}
                get["accept"] = "text/event-stream"
                r = None
                try:
                    async with gate:
                        r = await client.http.get(url, headers=get, timeout=aiohttp.ClientTimeout(total=None))
                    tally.statuses[r.status] += 1
                    if r.status != 200:
                        tally.five_xx.append(f"GET {r.status} {(await r.read())[:200]!r}")
                        settle()
                        return
                    opened.append(r)
                    settle()
                    await stop.wait()
                    if r.content.at_eof():
                        ended_early[0] += 1
                    else:
                        held[0] += 1
                    r.close()
                except (TimeoutError, aiohttp.ClientError) as e:
                    tally.errors[type(e).__name__] += 1
                    if r is None:
                        settle()

            tasks = [asyncio.create_task(stream(h)) for h in sessions]
            t_open = time.monotonic()
            try:
                await asyncio.wait_for(all_open.wait(), 300)
            except TimeoutError:
                pass
            open_s = time.monotonic() - t_open
            await asyncio.sleep(2)  # let RSS settle
            during = sampler.sample()
            # the data path while they are open: a call on a few of the sessions
            calls = [client.call(url, h, "echo", {"text": f"while-open-{i}"}) for i, h in enumerate(sessions[:50])]
            await asyncio.gather(*calls)
            await asyncio.sleep(max(0.0, hold - (time.monotonic() - t_open)))
            late = sampler.sample()
            stop.set()
            await asyncio.gather(*tasks)
            await client.close()
            return {
                "sessions": len(sessions),
                "open_s": open_s,
                "before": before[1] + before[2],
                "proc_delta": during[1] - before[1],
                "envoy_delta": during[2] - before[2],
                "late_total": late[1] + late[2],
            }

        t0 = time.monotonic()
        m = asyncio.run(drive())
        elapsed = time.monotonic() - t0
        rig.stop_gateway()
        v = verify_store(rig)
        out.check_recordings(rig, v)
        n = len(opened)
        out.check(m["sessions"] == streams, f"only {m['sessions']} of {streams} sessions opened")
        out.check(n == streams, f"only {n} of {streams} GET streams opened")
        out.check(held[0] == n, f"{ended_early[0]} streams ended before the hold was over")
        out.check(tally.statuses.get(503, 0) == 0, f"{tally.statuses.get(503)} 503s: {tally.five_xx[:3]}")
        out.check(not tally.errors, f"transport errors {dict(tally.errors)}")
        missing = {f"while-open-{i}" for i in range(min(50, m["sessions"]))} - tally.answered
        out.check(not missing, f"{len(missing)} calls on open sessions not answered")
        per_proc = m["proc_delta"] / max(n, 1)
        per_envoy = m["envoy_delta"] / max(n, 1)
        out.figures.update(
            streams_open=n,
            held_s=round(elapsed),
            open_all_s=round(m["open_s"], 1),
            processor_kib_per_stream=round(per_proc, 1),
            envoy_kib_per_stream=round(per_envoy, 1),
            statuses=dict(tally.statuses),
        )
        out.summary = (
            f"{n} GET SSE streams open at once (opened in {m['open_s']:.0f} s), held {hold:.0f} s, all still open at "
            f"the end, no 503; memory per open stream: processor {per_proc:.1f} KiB + Envoy {per_envoy:.1f} KiB "
            f"(RSS delta / streams, 2 workers)"
        )
    finally:
        rig.close()
    return out
