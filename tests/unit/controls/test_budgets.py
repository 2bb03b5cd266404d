"""Budgets: the sliding-window counters (in memory, and the Lua script against a real redis-server) and what a
body's calls are charged, refused or let through with when the store is down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from policy_helpers import SERVERS, write
from redis_server import RedisServer

from extproc.authn.principal import Principal
from extproc.controls.budgets import Budgets, Charge, Counter, LocalCounter, RedisCounter, StoreUnavailable
from extproc.errors import BudgetExceeded, BudgetUnavailable
from extproc.mcp.jsonrpc import McpCall
from extproc.policy.compiled import CompiledLimit, CompiledPolicy
from extproc.policy.engine import decide
from extproc.policy.loader import load_policy

ALICE = Principal("https://idp", "alice-sub", "alice")
BOB = Principal("https://idp", "bob-sub", "bob")
PER_MINUTE = CompiledLimit(3, 60.0, "1m")

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: search-budget
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [github], tools: [search]}
    limits:
      - {calls: 3, per: 1m}
  - name: per-tool
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [github], tools: [get_issue, list_issues]}
    limits:
      - {calls: 2, per: 1m, by: [tool]}
      - {calls: 3, per: 1d}
    on_store_error: open
"""


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
async def redis_counter(redis_server: RedisServer) -> AsyncIterator[RedisCounter]:
    counter = RedisCounter(redis_server.url, timeout=2.0)
    yield counter
    await counter.close()


@pytest.fixture(params=["local", "redis"])
async def counter(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Counter]:
    """Both stores answer the same questions the same way."""
    if request.param == "local":
        yield LocalCounter()
        return
    server = RedisServer(tmp_path / "redis").start()
    c = RedisCounter(server.url, timeout=2.0)
    try:
        yield c
    finally:
        await c.close()
        server.stop()


def _charges(*keys: str, limit: CompiledLimit = PER_MINUTE) -> list[Charge]:
    return [Charge(k, limit) for k in keys]


async def test_exactly_the_limit_passes_then_refused_with_the_time_until_a_call_leaves(counter: Counter) -> None:
    counts = [await counter.spend(_charges("k")) for _ in range(3)]
    refused = await counter.spend(_charges("k"))

    assert [s.counts for s in counts] == [(1,), (2,), (3,)]
    assert not refused.ok and refused.over == 0 and refused.count == 3
    assert 55 < refused.retry_after <= 60
    assert (await counter.spend(_charges("other"))).ok  # another key has its own window


async def test_all_or_nothing_a_refused_body_spends_nothing(counter: Counter) -> None:
    small = CompiledLimit(1, 60.0, "1m")
    assert (await counter.spend([Charge("a", PER_MINUTE), Charge("b", small)])).ok
    refused = await counter.spend([Charge("a", PER_MINUTE), Charge("b", small)])

    assert not refused.ok and refused.over == 1  # b is spent; a must not have taken the call
    assert (await counter.spend(_charges("a"))).counts == (2,)


async def test_a_key_repeated_in_one_body_counts_each_call(counter: Counter) -> None:
    assert (await counter.spend(_charges("k", "k"))).counts == (1, 2)
    refused = await counter.spend(_charges("k", "k"))  # 2 + 2 > 3

    assert not refused.ok and refused.over == 1 and refused.count == 3
    assert (await counter.spend(_charges("k"))).counts == (3,)  # nothing of the refused body was added


async def test_the_window_slides_calls_leave_after_per(counter: Counter) -> None:
    short = CompiledLimit(2, 0.3, "0.3s")
    assert (await counter.spend(_charges("k", limit=short))).ok
    assert (await counter.spend(_charges("k", limit=short))).ok
    assert not (await counter.spend(_charges("k", limit=short))).ok

    deadline = asyncio.get_running_loop().time() + 5
    while not (spent := await counter.spend(_charges("k", limit=short))).ok:
        assert asyncio.get_running_loop().time() < deadline, "the window never slid"
        await asyncio.sleep(0.02)  # polling a condition: the window is real time on the Redis server
    assert spent.counts[0] in (1, 2)  # 1 when both earlier calls left together, 2 when the second is younger


async def test_local_counter_slides_exactly_on_its_clock() -> None:
    clock = FakeClock()
    c = LocalCounter(clock)
    for _ in range(3):
        assert (await c.spend(_charges("k"))).ok
        clock.now += 10
    refused = await c.spend(_charges("k"))
    assert not refused.ok and refused.retry_after == pytest.approx(30.0)  # first call at 1000, now 1030
    clock.now = 1060.0  # the first call is exactly `per` old: out of the window
    assert (await c.spend(_charges("k"))).counts == (3,)


async def test_local_counter_forgets_idle_callers() -> None:
    clock = FakeClock()
    c = LocalCounter(clock, sweep_every=10)
    for n in range(9):
        assert (await c.spend(_charges(f"caller-{n}"))).ok
    assert len(c) == 9
    clock.now += 61  # every one of those calls has left its 1m window
    assert (await c.spend(_charges("busy"))).ok  # the 10th spend sweeps

    assert len(c) == 1


async def test_redis_never_exceeds_the_limit_under_many_concurrent_clients(redis_server: RedisServer) -> None:
    limit = CompiledLimit(30, 60.0, "1m")
    clients = [RedisCounter(redis_server.url, timeout=5.0) for _ in range(4)]
    try:
        results = await asyncio.gather(*(clients[i % 4].spend([Charge("k", limit)]) for i in range(200)))
    finally:
        for c in clients:
            await c.close()

    assert sum(r.ok for r in results) == 30
    assert sorted(r.counts[0] for r in results if r.ok) == list(range(1, 31))


async def test_redis_down_raises_store_unavailable_and_counting_resumes_after(
    redis_server: RedisServer, redis_counter: RedisCounter
) -> None:
    assert (await redis_counter.spend(_charges("k"))).ok
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        await redis_counter.spend(_charges("k"))
    redis_server.start()  # a fresh Redis: its script cache is empty too (EVALSHA falls back to loading it)

    assert (await redis_counter.spend(_charges("k"))).counts == (1,)
    assert (await redis_counter.spend(_charges("k"))).counts == (2,)


async def test_spends_in_flight_together_are_pipelined_and_survive_a_restarted_redis(
    redis_server: RedisServer, redis_counter: RedisCounter
) -> None:
    """Spends queued while one is in flight go together (one pipeline, each its own atomic script run); a fresh
    Redis has no script: the pipeline loads it and runs them again (NOSCRIPT refuses before running anything)."""
    first = await asyncio.gather(*(redis_counter.spend(_charges("k")) for _ in range(5)))
    redis_server.stop()
    redis_server.start()

    again = await asyncio.gather(*(redis_counter.spend(_charges("k")) for _ in range(5)))

    assert sorted(s.counts[0] for s in first if s.ok) == [1, 2, 3] and sum(not s.ok for s in first) == 2
    assert sorted(s.counts[0] for s in again if s.ok) == [1, 2, 3] and sum(not s.ok for s in again) == 2


async def test_redis_timeout_is_bounded(tmp_path: Path) -> None:
    """A store that accepts but never answers costs at most the timeout (then the rule's on_store_error)."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        counter = RedisCounter(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(StoreUnavailable):
            await counter.spend(_charges("k"))
        assert loop.time() - t0 < 1.5
        await counter.close()


# --- charging a body's calls -----------------------------------------------------------------------------------


class Seen:
    def __init__(self) -> None:
        self.refused: list[str] = []
        self.store_errors: list[str] = []

    def budget_refused(self, rule: str) -> None:
        self.refused.append(rule)

    def budget_store_error(self, outcome: str) -> None:
        self.store_errors.append(outcome)


@pytest.fixture
def policy(tmp_path: Path) -> CompiledPolicy:
    write(tmp_path / "policies", "policy.yaml", POLICY)
    return load_policy(tmp_path / "policies", SERVERS)


async def _charge(budgets: Budgets, policy: CompiledPolicy, who: Principal, *tools: str, seen: Seen | None = None):
    calls = [McpCall("tools/call", id=i, tool=t) for i, t in enumerate(tools)]
    decisions = [decide(policy, who, "github", c) for c in calls]
    return await budgets.charge(policy, who, "github", calls, decisions, seen)


async def test_charge_counts_per_caller_and_refuses_over_the_limit_naming_it(policy: CompiledPolicy) -> None:
    budgets, seen = Budgets(LocalCounter()), Seen()
    for n in (1, 2, 3):
        out = await _charge(budgets, policy, ALICE, "search")
        assert out.refusal is None
        assert out.records[0] == {"outcome": "counted", "store": "local",
                                  "limits": [{"limit": "3 calls per 1m (per caller)", "count": n}]}  # fmt: skip
    assert (await _charge(budgets, policy, BOB, "search")).refusal is None  # bob has his own budget

    out = await _charge(budgets, policy, ALICE, "search", seen=seen)

    assert isinstance(out.refusal, BudgetExceeded) and out.refusal.status == 429
    assert "search-budget" in out.refusal.safe_message and "3 calls per 1m" in out.refusal.safe_message
    assert out.headers == {"retry-after": "60"} and out.refused_call == 0
    assert out.records[0]["outcome"] == "exceeded" and out.records[0]["count"] == 3
    assert seen.refused == ["search-budget"]


async def test_by_tool_counts_each_tool_apart_and_every_limit_of_the_rule_applies(policy: CompiledPolicy) -> None:
    budgets = Budgets(LocalCounter())
    for tool in ("get_issue", "get_issue", "list_issues"):
        assert (await _charge(budgets, policy, ALICE, tool)).refusal is None
    out = await _charge(budgets, policy, ALICE, "list_issues")  # 2/1m per tool holds, but 3/1d over all is spent

    assert isinstance(out.refusal, BudgetExceeded) and "3 calls per 1d (per caller)" in out.refusal.safe_message


async def test_a_call_no_limit_covers_and_a_denied_call_cost_nothing(policy: CompiledPolicy) -> None:
    budgets = Budgets(LocalCounter())
    out = await _charge(budgets, policy, ALICE, "delete_repo")  # default deny: never charged

    assert out.records == {} and out.refusal is None


async def test_store_down_closed_rule_refuses_open_rule_passes_recorded(tmp_path: Path, policy: CompiledPolicy) -> None:
    server = RedisServer(tmp_path / "redis").start()
    budgets, seen = Budgets(RedisCounter(server.url, timeout=0.5)), Seen()
    try:
        server.stop()
        closed = await _charge(budgets, policy, ALICE, "search", seen=seen)
        opened = await _charge(budgets, policy, ALICE, "get_issue", seen=seen)
        mixed = await _charge(budgets, policy, ALICE, "get_issue", "search", seen=seen)
    finally:
        await budgets.close()

    assert isinstance(closed.refusal, BudgetUnavailable) and closed.refusal.status == 503
    assert closed.records[0]["outcome"] == "store-unavailable" and closed.records[0]["on_store_error"] == "closed"
    assert opened.refusal is None
    limits = ["2 calls per 1m (per caller, tool)", "3 calls per 1d (per caller)"]
    assert opened.records[0] == {"outcome": "store-unavailable", "store": "redis", "on_store_error": "open",
                                 "limits": limits}  # fmt: skip
    assert isinstance(mixed.refusal, BudgetUnavailable) and mixed.refused_call == 1  # one closed rule refuses all
    assert seen.store_errors == ["closed", "open", "closed"]
