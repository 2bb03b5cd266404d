"""Budgets: policy ``limits:`` counted per caller (issuer+subject), and optionally per tool and server.

A call the policy allowed is charged against every limit of the rule that allowed it, all at once: either every
counter takes the call or none does (a refused call spends nothing). The counters are sliding windows (the
calls of the last ``per`` seconds), exact rather than approximated, behind a small Protocol:

- ``LocalCounter``: this processor's memory; exact within one processor (the default: one machine, one worker).
- ``RedisCounter``: one Lua script per request body, run atomically by Redis (EVALSHA, one round trip), so every
  worker and replica sharing the Redis shares the counters. Redis's own clock times the windows: replicas with
  skewed clocks still agree. Bodies charged while one is in flight go together in one pipeline (each still its
  own atomic run): under load the round trip is shared, which halves the client's CPU per charge.

When the store fails (Redis unreachable or too slow) the rule's ``on_store_error`` decides: ``closed`` (the
default) refuses with 503, ``open`` lets the call pass, recorded as uncounted. The client reconnects on the next
call, so counting resumes as soon as Redis answers again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import math
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from extproc.authn.principal import Principal
from extproc.controls.budgets_config import Budgets as BudgetsConfig
from extproc.errors import BudgetExceeded, BudgetUnavailable, GatewayError
from extproc.mcp.jsonrpc import McpCall
from extproc.policy.compiled import CompiledLimit, CompiledPolicy
from extproc.policy.engine import Decision

log = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS: the counters of one request body (a key may repeat: two calls of a batch on the same counter).
# ARGV[1]: a token unique to this charge; then per key i: ARGV[2i] its limit, ARGV[2i+1] its window (ms).
# Returns {1, count_1, ..., count_n} when every counter took the call (count after it), or
# {0, i, count, retry_ms} for the first counter i that would go over (nothing was added anywhere).
SLIDING_WINDOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local seen = {}
local counts = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local limit = tonumber(ARGV[2 * i])
  local window = tonumber(ARGV[2 * i + 1])
  if seen[k] == nil then
    redis.call('ZREMRANGEBYSCORE', k, '-inf', now - window)
    seen[k] = redis.call('ZCARD', k)
  end
  if seen[k] + 1 > limit then
    local rank = seen[k] - limit
    local entry = redis.call('ZRANGE', k, rank, rank, 'WITHSCORES')
    local retry = window
    if entry[2] then retry = tonumber(entry[2]) + window - now end
    return {0, i, seen[k], retry}
  end
  seen[k] = seen[k] + 1
  counts[i] = seen[k]
end
for i = 1, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[1] .. ':' .. i)
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[2 * i + 1]))
end
return {1, unpack(counts)}
"""


class StoreUnavailable(Exception):
    """The counter store did not answer (connection refused, timeout, an error reply)."""


@dataclass(frozen=True, slots=True)
class Charge:
    """One counter one call is charged against."""

    key: str
    limit: CompiledLimit


@dataclass(frozen=True, slots=True)
class Spent:
    """The store's answer: every counter's value after the call, or the first counter over its limit."""

    ok: bool
    counts: tuple[int, ...] = ()  # ok: each charge's counter value including this call
    over: int = -1  # not ok: index of the charge that would go over
    count: int = 0  # not ok: that counter's value (calls in its window)
    retry_after: float = 0.0  # not ok: seconds until it takes a call again


class Counter(Protocol):
    """A store of sliding-window counters; ``spend`` is atomic over all its charges."""

    name: str

    async def spend(self, charges: Sequence[Charge]) -> Spent: ...

    async def close(self) -> None: ...


class LocalCounter:
    """Counters in this processor's memory. Exact within the processor: the event loop runs one spend at a time."""

    name = "local"

    def __init__(self, clock: Callable[[], float] = time.monotonic, sweep_every: int = 4096) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[float, deque[float]]] = {}  # key -> (window, times of its calls, oldest first)
        self._sweep_every = sweep_every  # spends between sweeps of idle callers' counters
        self._spends = 0

    def __len__(self) -> int:
        """Counters held (idle ones are forgotten at the next sweep)."""
        return len(self._windows)

    async def spend(self, charges: Sequence[Charge]) -> Spent:
        """Charge every counter, or none if one would go over."""
        now = self._clock()
        self._spends += 1
        if self._spends % self._sweep_every == 0:
            self._sweep(now)
        seen: dict[str, int] = {}
        counts: list[int] = []
        for i, c in enumerate(charges):
            held = self._windows.get(c.key)
            times = held[1] if held is not None else None
            if c.key not in seen:
                while times and times[0] <= now - c.limit.window:
                    times.popleft()
                seen[c.key] = len(times) if times is not None else 0
            if seen[c.key] + 1 > c.limit.calls:
                rank = seen[c.key] - c.limit.calls
                oldest = times[rank] if times is not None and rank < len(times) else now
                return Spent(False, over=i, count=seen[c.key], retry_after=oldest + c.limit.window - now)
            seen[c.key] += 1
            counts.append(seen[c.key])
        for c in charges:
            self._windows.setdefault(c.key, (c.limit.window, deque()))[1].append(now)
        return Spent(True, tuple(counts))

    def _sweep(self, now: float) -> None:
        """Forget counters whose every call has left their window: memory follows active callers only."""
        for key in [k for k, (window, t) in self._windows.items() if not t or t[-1] <= now - window]:
            del self._windows[key]

    async def close(self) -> None:
        self._windows.clear()


class RedisCounter:
    """Counters in Redis: one EVALSHA of ``SLIDING_WINDOW`` per request body, atomic on the server.

    Spends that arrive while one is in flight wait and then go together, pipelined (each still its own atomic
    script run): under load the round trips, system calls and event-loop wake-ups are shared, not multiplied."""

    name = "redis"

    def __init__(self, url: str, timeout: float = 0.25) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One immediate retry on a fresh connection (a pooled one may predate a Redis restart), no backoff: a
        # call must not wait seconds for a store that is down; ``timeout`` bounds each spend anyway.
        self._redis = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 1)
        )
        self._script = self._redis.register_script(SLIDING_WINDOW)
        self._timeout = timeout
        self._token = secrets.token_hex(8)
        self._seq = 0
        self._queue: list[tuple[list[str], list[Any], asyncio.Future[list[Any]]]] = []  # waiting behind one in flight
        self._busy = False  # a script run or a pipeline is in flight
        self._sender: asyncio.Task[None] | None = None

    async def spend(self, charges: Sequence[Charge]) -> Spent:
        """Charge every counter, or none if one would go over; StoreUnavailable when Redis does not answer."""
        import redis

        self._seq += 1
        keys = [c.key for c in charges]
        args: list[Any] = [f"{self._token}{self._seq:x}"]
        for c in charges:
            args += [c.limit.calls, max(1, round(c.limit.window * 1000))]
        try:
            async with asyncio.timeout(self._timeout):
                if self._busy:  # one is in flight: wait for it, then go with the others that waited
                    reply: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
                    self._queue.append((keys, args, reply))
                    result = await reply
                else:  # nothing in flight: straight to Redis, no extra hop through a task
                    self._busy = True
                    try:
                        result = await self._fresh(lambda: self._script(keys=keys, args=args))
                    finally:
                        self._hand_over()
        except (redis.RedisError, OSError, TimeoutError) as e:
            raise StoreUnavailable(f"{type(e).__name__}: {e}"[:300]) from e
        values = [int(v) for v in result]
        if values[0] == 1:
            return Spent(True, tuple(values[1:]))
        return Spent(False, over=values[1] - 1, count=values[2], retry_after=values[3] / 1000)

    def _hand_over(self) -> None:
        """The call in flight is done: what queued behind it goes in one pipeline (a task), or nothing is busy."""
        if self._queue:
            self._sender = asyncio.create_task(self._send())
        else:
            self._busy = False

    async def _send(self) -> None:
        """Send what is queued, one pipeline at a time, until nothing is left."""
        import redis

        try:
            while self._queue:
                batch, self._queue = self._queue, []
                try:
                    results = await self._fresh(functools.partial(self._pipelined, batch))
                except (redis.RedisError, OSError, TimeoutError) as e:
                    results = [e] * len(batch)
                for (_, _, reply), result in zip(batch, results, strict=True):
                    if reply.done():  # its caller stopped waiting (timeout)
                        continue
                    if isinstance(result, Exception):
                        reply.set_exception(StoreUnavailable(f"{type(result).__name__}: {result}"[:300]))
                    else:
                        reply.set_result(result)
        finally:
            self._busy = False
            self._sender = None

    async def _fresh(self, run: Callable[[], Awaitable[T]]) -> T:
        """``run`` once more on new connections if the connection broke: after a Redis restart every idle pooled
        connection is stale, and redis-py's own retry only renews the one it holds."""
        import redis

        try:
            return await run()
        except redis.ConnectionError:
            await self._redis.connection_pool.disconnect(inuse_connections=False)
            return await run()

    async def _pipelined(self, batch: list[tuple[list[str], list[Any], asyncio.Future[list[Any]]]]) -> list[Any]:
        """Several script runs in one round trip; a Redis that lost the script (restarted) gets it loaded first."""
        from redis.exceptions import NoScriptError

        for attempt in range(2):
            pipe = self._redis.pipeline(transaction=False)
            for keys, args, _ in batch:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
            if attempt == 0 and any(isinstance(r, NoScriptError) for r in results):
                await self._redis.script_load(SLIDING_WINDOW)  # none of them ran: NOSCRIPT refuses before running
                continue
            return results
        return results

    async def close(self) -> None:
        if self._sender is not None:
            await asyncio.gather(self._sender, return_exceptions=True)
        await self._redis.aclose()


def counter_from_config(cfg: BudgetsConfig | None) -> Counter:
    """The configured store; local without a ``budgets:`` section."""
    if cfg is None or not cfg.shared:
        return LocalCounter()
    return RedisCounter(cfg.store, cfg.timeout_ms / 1000)


def counter_key(prefix: str, rule: str, limit: CompiledLimit, who: Principal, server: str, call: McpCall) -> str:
    """The counter of one limit for this caller (and server and tool when the limit says ``by``): hashed, so a
    key is short and names nobody in Redis; the window is part of it, so 30/1m and 1000/1d never share."""
    parts = [rule, limit.per, who.issuer, who.subject]
    parts += [server if limit.by_server else "", (call.tool or "") if limit.by_tool else ""]
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()[:32]
    return f"{prefix}{digest}"


class Refusals(Protocol):
    """The metrics budgets update (extproc.metrics.Metrics has both)."""

    def budget_refused(self, rule: str) -> None: ...

    def budget_store_error(self, outcome: str) -> None: ...


@dataclass
class Outcome:
    """What budgets did to one body's calls: a record per charged call (by index), and the refusal if any."""

    records: dict[int, dict[str, object]] = field(default_factory=dict)
    refusal: GatewayError | None = None
    refused_call: int = -1  # the call whose limit refused the body
    headers: dict[str, str] = field(default_factory=dict)  # Retry-After with a 429


class Budgets:
    """The processor's budgets: the counter store and what a refusal or a store failure becomes."""

    def __init__(self, counter: Counter, key_prefix: str = "mcp-extproc:budget:") -> None:
        self.counter = counter
        self.key_prefix = key_prefix

    @classmethod
    def from_config(cls, cfg: BudgetsConfig | None) -> Budgets:
        """Budgets over the configured store (local without a section)."""
        return cls(counter_from_config(cfg), cfg.key_prefix if cfg is not None else "mcp-extproc:budget:")

    async def charge(
        self,
        policy: CompiledPolicy,
        who: Principal,
        server: str,
        calls: Sequence[McpCall],
        decisions: Sequence[Decision],
        metrics: Refusals | None = None,
    ) -> Outcome:
        """Charge the allowed calls of one body against their rules' limits, all at once (one store round trip)."""
        out = Outcome()
        charges: list[Charge] = []
        owners: list[int] = []  # the call index of each charge
        for i, (call, d) in enumerate(zip(calls, decisions, strict=True)):
            budget = policy.budgets.get(d.rule) if d.allowed else None
            if budget is None:
                continue
            for limit in budget.limits:
                charges.append(Charge(counter_key(self.key_prefix, d.rule, limit, who, server, call), limit))
                owners.append(i)
        if not charges:
            return out
        try:
            spent = await self.counter.spend(charges)
        except StoreUnavailable as e:
            return self._store_failed(policy, decisions, owners, charges, str(e), metrics)
        if not spent.ok:
            i = owners[spent.over]
            limit = charges[spent.over].limit
            rule = decisions[i].rule
            retry = max(1, math.ceil(spent.retry_after))
            out.records[i] = {
                "outcome": "exceeded", "store": self.counter.name, "limit": limit.describe(), "count": spent.count,
                "retry_after": retry,
            }  # fmt: skip
            out.refusal = BudgetExceeded(rule, limit.describe(), retry)
            out.refused_call = i
            out.headers = {"retry-after": str(retry)}
            if metrics is not None:
                metrics.budget_refused(rule)
            return out
        counted: dict[int, list[dict[str, object]]] = {}  # call index -> its limits, in charge order
        for j, (i, c) in enumerate(zip(owners, charges, strict=True)):
            counted.setdefault(i, []).append({"limit": c.limit.describe(), "count": spent.counts[j]})
        for i, limits in counted.items():
            out.records[i] = {"outcome": "counted", "store": self.counter.name, "limits": limits}
        return out

    def _store_failed(
        self,
        policy: CompiledPolicy,
        decisions: Sequence[Decision],
        owners: list[int],
        charges: list[Charge],
        why: str,
        metrics: Refusals | None,
    ) -> Outcome:
        """The store did not answer: each rule's on_store_error decides; one closed rule refuses the body."""
        out = Outcome()
        closed = -1
        for i in dict.fromkeys(owners):
            budget = policy.budgets[decisions[i].rule]
            mode = "open" if budget.fail_open else "closed"
            limits = [c.limit.describe() for c, o in zip(charges, owners, strict=True) if o == i]
            out.records[i] = {"outcome": "store-unavailable", "store": self.counter.name, "on_store_error": mode,
                              "limits": limits}  # fmt: skip
            if not budget.fail_open and closed < 0:
                closed = i
        log.warning(
            "budget store %s unavailable (%s): %s", self.counter.name, why, "refusing" if closed >= 0 else "passing"
        )
        if metrics is not None:
            metrics.budget_store_error("closed" if closed >= 0 else "open")
        if closed >= 0:
            out.refusal = BudgetUnavailable()
            out.refused_call = closed
        return out

    async def close(self) -> None:
        await self.counter.close()
