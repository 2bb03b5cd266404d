"""Worker death under load: kill -9 one of two workers mid-traffic, restart it as `up` does, ship its spool."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from bench.faults.client import Client, Tally
from bench.faults.harness import Outcome, RssSampler, verify_store
from bench.faults.soak import Mix, start_rig

SCALES = {"small": (40, 24.0), "full": (300, 90.0)}
SHIP_WAIT_S = 60.0  # after the traffic, how long the dead writer's spool may take to be shipped
RESTART_AFTER = 3.0  # seconds the supervisor waits before its rounds (so the survivor serves alone meanwhile)


def run(scale: str) -> Outcome:
    sessions, seconds = SCALES[scale]
    out = Outcome("worker-death", scale)
    rig = start_rig("death")
    stack = rig.stack
    assert stack is not None
    try:
        sampler = RssSampler(stack).start()
        tally = Tally()
        marks: dict[str, float] = {}
        windows: dict[str, int] = {}
        victim = stack.processors[0]
        spool = Path(rig.config["recording"]["directory"]) / ".spool"
        dead: list[Path] = []  # the killed writer's spool folder(s)

        def killer() -> None:
            time.sleep(seconds / 3)
            windows["before"] = len(tally.answered)
            victim.kill()  # SIGKILL
            marks["kill"] = time.monotonic()
            victim.wait()
            dead.extend(p for p in spool.iterdir() if p.is_dir() and p.name.startswith(f"vm-{victim.pid}-"))
            time.sleep(RESTART_AFTER)
            windows["alone"] = len(tally.answered) - windows["before"]
            while stack.processors[0] is victim or not Path(stack.workdir / "processor-0.ready").exists():
                stack.supervise()  # what `mcp-extproc up` runs: backoff, then restart
                time.sleep(0.1)
            marks["restart"] = time.monotonic()
            while time.monotonic() - marks["restart"] < SHIP_WAIT_S:  # adopted by a completer, shipped, removed
                if dead and not any(p.exists() for p in dead):
                    marks["shipped"] = time.monotonic()
                    break
                time.sleep(0.2)

        async def drive() -> Mix:
            client = Client(tally)
            # long count_slowly calls besides the echo mix, so some exchanges are mid-stream at the kill
            mix = Mix(rig, client, ["demo", "demojson"], time.monotonic() + seconds)

            async def slow(i: int) -> None:
                url, token = rig.url("demo"), rig.token(f"slow-{i}")
                headers = await client.open_session(url, token)
                while headers and time.monotonic() < mix.deadline:
                    await client.call(url, headers, "count_slowly", {"n": 20, "delay": 0.1})

            try:
                await asyncio.gather(mix.run(sessions), *(slow(i) for i in range(max(4, sessions // 10))))
            finally:
                await client.close()
            return mix

        thread = threading.Thread(target=killer, daemon=True)
        thread.start()
        t0 = time.monotonic()
        asyncio.run(drive())
        elapsed = time.monotonic() - t0
        thread.join()
        sampler.stop()
        shipped_after = marks["shipped"] - marks["kill"] if "shipped" in marks else None
        rig.stop_gateway()
        v = verify_store(rig)
        out.check_recordings(rig, v, allow_incomplete=True)
        out.check(bool(dead), "the dead writer's spool folder was not found")
        out.check(
            shipped_after is not None, f"the dead writer's spool was not shipped {SHIP_WAIT_S:.0f} s after the restart"
        )
        left = [p for p in spool.rglob("*") if p.suffix in (".seg", ".manifest") and p.name != "head.manifest"]
        out.check(not left, f"{len(left)} segment files left in the spool: {left[:3]}")
        out.check("restart" in marks, "the dead worker was never restarted")
        out.check(windows.get("alone", 0) > 0, "no call answered while one worker was dead")
        out.check(v.states.get("incomplete", 0) > 0, "no exchange marked incomplete (none in flight at the kill?)")
        unrecorded = tally.answered - v.responded_texts
        out.check(
            not unrecorded,
            f"{len(unrecorded)} answered calls without a recorded response, e.g. {sorted(unrecorded)[:3]}",
        )
        no_end = tally.answered - v.ended_texts
        out.figures["answered_not_requested"] = sorted(tally.answered - v.requested_texts)[:20]
        no_response = (tally.answered & v.requested_texts) - v.responded_texts
        out.figures["answered_requested_no_response"] = sorted(no_response)[:20]
        failed = sum(n for s, n in tally.statuses.items() if s >= 500) + sum(tally.errors.values())
        out.figures.update(
            concurrent=sessions,
            seconds=round(elapsed),
            requests=tally.requests,
            statuses=dict(tally.statuses),
            transport_errors=dict(tally.errors),
            failed_at_kill=failed,
            answered_while_alone=windows.get("alone"),
            restart_s=round(marks.get("restart", 0) - marks.get("kill", 0), 1),
            incomplete=v.states.get("incomplete"),
            answered_without_end=len(no_end),
            spool_shipped_s_after_kill=shipped_after and round(shipped_after, 1),
            processor_rss_mib=sampler.over_time(),
        )
        out.summary = (
            f"{sessions} sessions + long calls; worker 0 killed at {seconds / 3:.0f} s: {failed} requests failed "
            f"(5xx/reset), {len(unrecorded)} answered without a recorded response, {windows.get('alone', 0)} calls "
            f"answered by the survivor in {RESTART_AFTER:.0f} s alone, restarted after {out.figures['restart_s']} s, "
            f"{v.states.get('incomplete', 0)} sessions marked incomplete, its spool shipped "
            f"{shipped_after and round(shipped_after)} s "
            f"after the kill; "
            f"{tally.line(elapsed)}"
        )
    finally:
        rig.close()
    return out
