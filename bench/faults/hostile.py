"""Hostile MCP servers: invalid JSON, huge SSE events, never-ending streams, wrong session ids, answers to ids never
asked. Recorded faithfully, no crash, bounded processor memory."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections import Counter
from pathlib import Path

import aiohttp

from bench.faults.client import ACCEPT, Client, Tally, call_body
from bench.faults.harness import Outcome, Rig, RssSampler, verify_store
from bench.faults.hostile_server import HUGE, _event, _result
from extproc.recording.replay import load_session

SCALES = {"small": 10, "full": 100}  # sessions per misbehaviour
ENDLESS_READ_S = 2.0
ALLOW_ALL = """
apiVersion: mcp-extproc/v1
rules:
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
"""
# what the recording of each misbehaviour must hold (the server's bytes, as sent)
MARKERS = {
    "invalid_json": '"result\\": {\\"oops',
    "huge_event": '"withheld": "SSE event over recording.max_event_body_bytes"',  # and its size + SHA-256: below
    "endless": "notifications/progress",
    "wrong_session": '"wrong"',
    "unasked_id": "987654",
}


def huge_event_hashed(events: list[dict]) -> bool:  # type: ignore[type-arg]
    """The 4 MiB event, too big to hold, is recorded as the size and SHA-256 of exactly what the server sent."""
    ids = [m.get("id") for e in events if e.get("type") == "mcp.request" for m in e.get("messages") or []]
    sent = {_event(_result(i, "x" * HUGE)) for i in ids if i is not None}
    recorded = {(e.get("size"), (e.get("body") or {}).get("sha256")) for e in events if e.get("type") == "mcp.response"}
    return any((len(raw), hashlib.sha256(raw).hexdigest()) in recorded for raw in sent)


def run(scale: str) -> Outcome:
    per = SCALES[scale]
    out = Outcome("hostile", scale)
    rig = Rig("hostile")
    try:
        (rig.policy_dir / "policy.yaml").write_text(ALLOW_ALL)
        rig.raw_server("hostile", str(Path(__file__).with_name("hostile_server.py")))
        rig.gateway()
        url = rig.url("hostile")
        sampler = RssSampler(rig.stack).start()  # type: ignore[arg-type]
        base = sampler.samples[0][1]
        statuses: dict[str, Counter[str]] = {b: Counter() for b in MARKERS}
        received: dict[str, int] = Counter()

        async def drive() -> None:
            client = Client(Tally(), timeout=120)

            async def one(behaviour: str, i: int) -> None:
                headers = await client.open_session(url, rig.token(f"{behaviour}-{i}"))
                if headers is None:
                    statuses[behaviour]["init-failed"] += 1
                    return
                body = call_body(behaviour, {"text": f"{behaviour}-{i}"})
                try:
                    async with client.http.post(url, json=body, headers={**ACCEPT, **headers}) as r:
                        if behaviour == "endless":
                            t0 = time.monotonic()
                            async for chunk in r.content.iter_any():
                                received[behaviour] += len(chunk)
                                if time.monotonic() - t0 > ENDLESS_READ_S:
                                    break  # the client gives up; the server would go on for ever
                        else:
                            data = await r.read()  # read first: `x[k] += await ...` loses concurrent updates
                            received[behaviour] += len(data)
                        statuses[behaviour][str(r.status)] += 1
                except (TimeoutError, aiohttp.ClientError) as e:
                    statuses[behaviour][type(e).__name__] += 1

            try:
                await asyncio.gather(*(one(b, i) for b in MARKERS for i in range(per)))
            finally:
                await client.close()

        asyncio.run(drive())
        time.sleep(2)
        sampler.stop()
        stack = rig.stack
        assert stack is not None
        alive = all(p.poll() is None for p in [*stack.processors, stack.envoy] if p is not None)
        peak = max(p for _, p, _ in sampler.samples)
        rig.stop_gateway()
        v = verify_store(rig)
        out.check_recordings(rig, v)
        out.check(alive, "a processor or Envoy died")
        out.check(peak - base < 400 << 10, f"processor RSS grew {(peak - base) >> 10} MiB")
        faithful: Counter[str] = Counter()
        for key in rig.store.list_sessions():
            s = load_session(rig.store, key)
            text = json.dumps(s.events)
            for b, marker in MARKERS.items():
                if f'"name": "{b}"' in text and marker in text and (b != "huge_event" or huge_event_hashed(s.events)):
                    faithful[b] += 1
        for b in MARKERS:
            out.check(faithful[b] == per, f"{b}: {faithful[b]} of {per} recorded with what the server sent")
            out.check(sum(statuses[b].values()) == per, f"{b}: {dict(statuses[b])}")
        out.figures.update(
            per_behaviour=per,
            statuses={b: dict(c) for b, c in statuses.items()},
            recorded_faithfully=dict(faithful),
            processor_rss_mib_base=round(base / 1024),
            processor_rss_mib_peak=round(peak / 1024),
            bytes_received=dict(received),
        )
        out.summary = (
            f"{per} sessions per misbehaviour; client saw "
            + ", ".join(f"{b} {dict(c)}" for b, c in statuses.items())
            + f"; all recorded as sent; processor RSS {base / 1024:.0f}→{peak / 1024:.0f} MiB peak (2 workers)"
        )
    finally:
        rig.close()
    return out
