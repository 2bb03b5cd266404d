"""Policy reload under load: 100 reloads during the soak, half of them broken, good ones written non-atomically.

Two good versions differ only in the name of the rule that allows the eng tools (eng-tools-a / eng-tools-b), so
every recorded decision names the version it was made by. A decision by anything else (a default-deny for an
allowed call, an allow for a denied one) is a request decided by a half-loaded policy or a failure opened.
"""

from __future__ import annotations

import asyncio
import re
import time

from bench.faults.client import Client, Tally
from bench.faults.harness import POLICY, Outcome, verify_store
from bench.faults.soak import Mix, start_rig

SCALES = {"small": (30, 25.0), "full": (300, 120.0)}
RELOADS = 100
LONG_PAUSE = 0.6  # longer than the watcher's interval and settle time: only "open for writing" can tell
BROKEN = [
    "apiVersion: mcp-extproc/v1\nrules:\n  - name: [unclosed\n",  # YAML syntax error
    POLICY.format(suffix="-x").replace("effect: deny", "effect: maybe"),  # schema error
    POLICY.format(suffix="-x").replace("tools: [add]", "tools: [add]\n    typo_key: 1"),  # unknown key
    "",  # empty file
]


async def write_torn(path, text: str, pause: float = 0.03) -> None:  # type: ignore[no-untyped-def]
    """Write ``text`` in two halves with a pause between (what an editor or a slow copy does)."""
    data = text.encode()
    with path.open("wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        await asyncio.sleep(pause)
        f.write(data[len(data) // 2 :])


def run(scale: str) -> Outcome:
    sessions, seconds = SCALES[scale]
    out = Outcome("policy-reload", scale)
    rig = start_rig("reload")
    try:
        tally = Tally()
        target = rig.policy_dir / "policy.yaml"
        written = {"good": 0, "broken": 0}

        async def drive() -> None:
            client = Client(tally)
            mix = Mix(rig, client, ["demo", "demojson"], time.monotonic() + seconds)

            async def reloads() -> None:
                gap = (seconds - 2) / RELOADS
                for i in range(RELOADS):
                    await asyncio.sleep(gap)
                    pause = LONG_PAUSE if i % 10 == 0 else 0.03  # some pauses outlast the watcher's settle time
                    if i % 2:
                        await write_torn(target, BROKEN[(i // 2) % len(BROKEN)], pause)
                        written["broken"] += 1
                    else:
                        await write_torn(target, POLICY.format(suffix="-a" if i % 4 == 0 else "-b"), pause)
                        written["good"] += 1
                # end on a good version, so the last state is known
                await write_torn(target, POLICY.format(suffix="-a"))

            try:
                await asyncio.gather(mix.run(sessions), reloads())
            finally:
                await client.close()

        asyncio.run(drive())
        rig.stop_gateway()
        v = verify_store(rig)
        out.check_recordings(rig, v)
        wrong: list[str] = []
        by_rule: dict[str, int] = {}
        for d in v.decisions:
            rule, call = d.get("rule", ""), d.get("call", "")
            by_rule[rule] = by_rule.get(rule, 0) + 1
            user = _user(d)
            if call.startswith("tools/call 'echo'"):
                ok = (
                    (rule in ("eng-tools", "eng-tools-a", "eng-tools-b") and d["allowed"])
                    if user != "nogroup"
                    else (rule == "default-deny" and not d["allowed"])
                )
            elif call.startswith("tools/call 'add'"):
                ok = rule == "nobody-adds" and not d["allowed"]
            else:
                ok = d["allowed"] and rule == "everyone-lists"
            if not ok:
                wrong.append(f"{call} by {rule} allowed={d['allowed']} for {user or 'eng'}")
        out.check(not wrong, f"{len(wrong)} decisions by no complete policy version: {wrong[:5]}")
        five = tally.undeliberate_5xx
        out.check(five == 0 and not tally.errors, f"{five} 5xx besides the recorder's refusals, {dict(tally.errors)}")
        text = rig.log.read_text(errors="replace")
        reloaded, rejected = len(re.findall(r"policy reloaded from", text)), len(re.findall(r"reload rejected", text))
        out.check(rejected > 0, "no broken policy was ever rejected")
        out.check(reloaded > 0, "no good policy was ever reloaded")
        out.figures.update(
            sessions=sessions,
            seconds=seconds,
            written=written,
            reloads_logged=reloaded,
            rejections_logged=rejected,
            decisions=len(v.decisions),
            decisions_by_rule=by_rule,
            requests=tally.requests,
            p50_ms=round(tally.percentile(0.5)),
            p99_ms=round(tally.percentile(0.99)),
        )
        out.summary = (
            f"{sessions} sessions, {written['good']} good + {written['broken']} broken policy writes (torn, "
            f"non-atomic) in {seconds:.0f} s; both workers logged {reloaded} reloads and {rejected} rejections; "
            f"{len(v.decisions)} decisions, each by a complete version ({by_rule}); {tally.line(seconds)}"
        )
    finally:
        rig.close()
    return out


def _user(decision: dict) -> str:  # type: ignore[type-arg]
    """The soak's callers user-N with N % 10 == 9 have no group (their echo calls fall to default deny)."""
    return "nogroup" if str(decision.get("_user", "")).endswith("9") else ""
