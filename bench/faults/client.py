"""A raw MCP client on aiohttp (the SDK client costs too much CPU per request to drive 1,000 sessions here).

Every call carries a unique ``text`` argument, so afterwards each answered call can be found in the recordings.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
V2025 = "2025-11-25"
V2026 = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": V2026,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "faults", "version": "1"},
}
REFUSED = b"recording unavailable; request refused"
SHED = b"gateway overloaded; retry later"
_ids = itertools.count(1)


@dataclass
class Tally:
    """Outcomes of the client's requests."""

    statuses: Counter[int] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    answered: set[str] = field(default_factory=set)  # texts of calls answered 200 with a result
    denied: int = 0  # calls refused by policy (JSON-RPC error from the gateway)
    refused: int = 0  # 503 "recording unavailable": the recorder's deliberate back-pressure (fail closed)
    shed: int = 0  # 503 "gateway overloaded": a worker's load shedding (its event loop too far behind)
    errors: Counter[str] = field(default_factory=Counter)  # transport errors by kind
    five_xx: list[str] = field(default_factory=list)  # bodies of unexpected 5xx (first few)
    started: float = field(default_factory=time.monotonic)

    def percentile(self, p: float) -> float:
        lat = sorted(self.latencies)
        return lat[min(len(lat) - 1, int(len(lat) * p))] * 1000 if lat else 0.0

    @property
    def requests(self) -> int:
        return sum(self.statuses.values())

    @property
    def undeliberate_5xx(self) -> int:
        """5xx other than the gateway's deliberate refusals (recorder back-pressure, load shedding)."""
        return sum(n for s, n in self.statuses.items() if s >= 500) - self.refused - self.shed

    def line(self, seconds: float) -> str:
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(self.statuses.items()))
        errs = f"; transport errors {dict(self.errors)}" if self.errors else ""
        return (
            f"{self.requests} requests in {seconds:.0f} s = {self.requests / max(seconds, 1e-9):.0f} req/s, "
            f"p50 {self.percentile(0.5):.0f} ms, p99 {self.percentile(0.99):.0f} ms; status {{{codes}}}; "
            f"{len(self.answered)} calls answered, {self.denied} denied by policy, {self.refused} refused by the "
            f"recorder's back-pressure (503), {self.shed} shed by overloaded workers (503){errs}"
        )


def call_body(tool: str, args: dict[str, Any], stateless: bool = False) -> dict[str, Any]:
    params: dict[str, Any] = {"name": tool, "arguments": args}
    if stateless:
        params["_meta"] = META
    return {"jsonrpc": "2.0", "id": next(_ids), "method": "tools/call", "params": params}


class Client:
    """One aiohttp connection pool; ``tally`` collects what happened."""

    def __init__(self, tally: Tally | None = None, timeout: float = 60) -> None:
        self.tally = tally or Tally()
        self.http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            timeout=aiohttp.ClientTimeout(total=timeout),
            auto_decompress=True,
        )

    async def close(self) -> None:
        await self.http.close()

    async def post(self, url: str, body: Any, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        t0 = time.monotonic()
        try:
            async with self.http.post(url, json=body, headers=headers) as r:
                data = await r.read()
                status, hdrs = r.status, dict(r.headers)
        except (TimeoutError, aiohttp.ClientError) as e:
            self.tally.errors[type(e).__name__] += 1
            return 0, {}, b""
        self.tally.latencies.append(time.monotonic() - t0)
        self.tally.statuses[status] += 1
        if status == 503 and REFUSED in data:
            self.tally.refused += 1
        elif status == 503 and SHED in data:
            self.tally.shed += 1
        elif status >= 500 and len(self.tally.five_xx) < 5:
            self.tally.five_xx.append(f"{status} {data[:300]!r}")
        return status, hdrs, data

    async def open_session(self, url: str, token: str) -> dict[str, str] | None:
        """2025: initialize + notifications/initialized; the headers of the session's next requests."""
        base = {**ACCEPT, "authorization": f"Bearer {token}"}
        init = {
            "jsonrpc": "2.0",
            "id": next(_ids),
            "method": "initialize",
            "params": {"protocolVersion": V2025, "capabilities": {}, "clientInfo": {"name": "faults", "version": "1"}},
        }
        status, hdrs, _ = await self.post(url, init, base)
        sid = {k.lower(): v for k, v in hdrs.items()}.get("mcp-session-id")
        if status != 200 or not sid:
            return None
        headers = {**base, "mcp-session-id": sid, "mcp-protocol-version": V2025}
        await self.post(url, {"jsonrpc": "2.0", "method": "notifications/initialized"}, headers)
        return headers

    async def call(self, url: str, headers: dict[str, str], tool: str, args: dict[str, Any]) -> int:
        """A 2025 tools/call in a session; records the outcome in the tally."""
        return await self._call(url, headers, call_body(tool, args), args)

    async def stateless_call(self, url: str, token: str, tool: str, args: dict[str, Any]) -> int:
        """A 2026-07-28 stateless tools/call (no session; protocol in headers and _meta)."""
        headers = {
            **ACCEPT,
            "authorization": f"Bearer {token}",
            "mcp-protocol-version": V2026,
            "mcp-method": "tools/call",
            "mcp-name": tool,
        }
        return await self._call(url, headers, call_body(tool, args, stateless=True), args)

    async def _call(self, url: str, headers: dict[str, str], body: dict[str, Any], args: dict[str, Any]) -> int:
        status, _, data = await self.post(url, body, headers)
        if status == 200 and b'"result"' in data:
            text = args.get("text")
            if isinstance(text, str):
                self.tally.answered.add(text)
        elif b'"error"' in data and (b"denied" in data.lower() or b"policy" in data.lower() or status == 403):
            self.tally.denied += 1
        return status
