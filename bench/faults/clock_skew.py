"""Clock skew: tokens at the boundary of the issuer's clock_skew_seconds (60 by default).

Expired 55 s ago or valid from 55 s ahead: accepted. 65 s: refused (401). A token accepted just inside the window
and reused after it has left it is refused then too (the verification cache honours expiry and skew).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from bench.faults.client import Client, Tally
from bench.faults.harness import Outcome, Rig, verify_store

SCALES = {"small": 20, "full": 200}
SKEW = 60
MARGIN = 5  # seconds either side of the boundary (minting to checking takes well under this, even under load)
REUSE_AFTER = MARGIN + 4.0


def run(scale: str) -> Outcome:
    n = SCALES[scale]
    out = Outcome("clock-skew", scale)
    rig = Rig("skew")
    try:
        rig.mcp_server("demojson", True)
        rig.gateway(auth={"clock_skew_seconds": SKEW})
        url = rig.url("demojson")
        results: dict[str, Counter[int]] = {}

        def token(kind: str, i: int) -> str:
            now = int(time.time())
            off = SKEW - MARGIN if kind.endswith("inside") else SKEW + MARGIN
            claims = {"exp": now - off, "iat": now - off - 300, "nbf": now - off - 300}
            if kind.startswith("nbf"):
                claims = {"nbf": now + off, "iat": now, "exp": now + off + 300}
            return rig.token(f"{kind}-{i}", extra_claims=claims)

        async def drive() -> list[str]:
            client = Client(Tally())
            kinds = ["exp-inside", "exp-outside", "nbf-inside", "nbf-outside"]

            async def one(kind: str, i: int) -> tuple[str, int, str]:
                tok = token(kind, i)
                if i % 2:
                    status = await client.stateless_call(url, tok, "echo", {"text": f"{kind}-{i}"})
                else:
                    status = 200 if await client.open_session(url, tok) is not None else 401
                results.setdefault(kind, Counter())[status] += 1
                return kind, status, tok

            done = await asyncio.gather(*(one(k, i) for k in kinds for i in range(n)))
            # accepted just inside the expiry window; reused once the window has passed: refused
            reuse = [tok for kind, status, tok in done if kind == "exp-inside" and status == 200][: max(2, n // 4)]
            await asyncio.sleep(REUSE_AFTER)
            for j, tok in enumerate(reuse):
                status = await client.stateless_call(url, tok, "echo", {"text": f"reused-{j}"})
                results.setdefault("exp-inside-reused-later", Counter())[status] += 1
            await client.close()
            return reuse

        asyncio.run(drive())
        rig.stop_gateway()
        v = verify_store(rig)
        out.check_recordings(rig, v)
        expect = {
            "exp-inside": 200,
            "nbf-inside": 200,
            "exp-outside": 401,
            "nbf-outside": 401,
            "exp-inside-reused-later": 401,
        }
        for kind, status in expect.items():
            got = results.get(kind, Counter())
            out.check(set(got) == {status}, f"{kind}: expected all {status}, got {dict(got)}")
        out.figures.update(skew_s=SKEW, margin_s=MARGIN, results={k: dict(c) for k, c in results.items()})
        out.summary = f"clock_skew_seconds {SKEW}, tokens ±{MARGIN} s around it: " + ", ".join(
            f"{k} {dict(c)}" for k, c in results.items()
        )
    finally:
        rig.close()
    return out
