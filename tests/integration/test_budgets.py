"""Budgets through real Envoy: policy limits counted per caller, exactly with one worker (in memory), and across
workers and gateway replicas through one real redis-server; a Redis outage answered as each rule says."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_parts import Gateway, SampleServer, open_session, recording_key
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect
from extproc.launcher import free_port

BASICS = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, server/discover, ping, "notifications/*", tools/list, http/get,
                                        http/delete]}
"""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def start_budgeted(start_gateway, issuer: DevIssuer, tmp_path: Path) -> Callable[..., Gateway]:
    """A gateway trusting ``issuer`` with ``policy``; ``workers`` processors sharing one session key; ``store``:
    the budgets section (None: local)."""
    secret = tmp_path / "session.key"
    secret.write_text(secrets.token_hex(32))

    def start(
        servers: list[SampleServer], policy: str, workers: int = 1, store: str | None = None, metrics_port: int = 0
    ) -> Gateway:
        port = free_port()
        policies = tmp_path / f"policies-{port}"
        policies.mkdir()
        (policies / "policy.yaml").write_text(policy)
        auth = {
            "public_url": f"http://127.0.0.1:{port}",
            "issuers": [{"issuer": issuer.url}],
            "session_secret_file": str(secret),
        }
        extra: dict[str, Any] = {
            "processor": {"workers": workers, **({"metrics_port": metrics_port} if metrics_port else {})}
        }
        if store is not None:
            extra["budgets"] = {"store": store, "timeout_ms": 2000}  # a loaded box: reconnect + script load
        policy_cfg = {"directory": str(policies), "reload_interval_ms": 200}
        return start_gateway(servers, listen={"port": port}, auth=auth, policy=policy_cfg, **extra)

    return start


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(httpx.get(url, timeout=5).text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def _events(gw: Gateway) -> list[dict[str, Any]]:
    return [json.loads(x) for p in gw.store.root.rglob("*.jsonl") for x in p.read_bytes().splitlines()]


def _call(tool: str, args: dict[str, Any], i: int = 7) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {"name": tool, "arguments": args}}


async def test_thirty_a_minute_exactly_with_one_worker(start_mcp_server, start_budgeted, issuer: DevIssuer) -> None:
    server = start_mcp_server("demo", json_response=True)
    policy = (
        BASICS
        + """
  - name: echo-budget
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
    limits:
      - {calls: 30, per: 1m}
"""
    )
    gw = start_budgeted([server], policy)
    token = issuer.mint("alice", aud=gw.endpoint)
    async with connect(gw.url(), token=token, mode="legacy") as conn:
        for i in range(30):
            assert (await conn.client.call_tool("echo", {"text": str(i)})).structured_content == {"result": str(i)}
        with pytest.raises(Exception) as refused:  # the SDK raises its MCPError carrying the JSON-RPC error
            await conn.client.call_tool("echo", {"text": "31"})
    assert "echo-budget" in str(refused.value) and "30 calls per 1m (per caller)" in str(refused.value)

    headers = open_session(gw.url(), token)  # the same caller in another session: the same budget
    r = httpx.post(gw.url(), json=_call("echo", {"text": "x"}), headers=headers, timeout=10)
    assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 60
    assert r.json()["error"]["code"] == -32029 and "echo-budget" in r.json()["error"]["message"]
    bob = open_session(gw.url(), issuer.mint("bob", aud=gw.endpoint))
    assert httpx.post(gw.url(), json=_call("echo", {"text": "b"}), headers=bob, timeout=10).status_code == 200

    assert sum(1 for r in server.seen() if r["method"] == "tools/call") == 31  # 30 of alice's, 1 of bob's
    gw.stop()
    budgets = [e["budget"] for e in _events(gw) if e["type"] == "policy.decision" and e.get("budget")]
    counted = sorted(b["limits"][0]["count"] for b in budgets if b["outcome"] == "counted")
    assert counted == [1, *range(1, 31)]  # bob's first, alice's 1..30
    exceeded = [b for b in budgets if b["outcome"] == "exceeded"]
    assert len(exceeded) == 2 and all(b["count"] == 30 and b["store"] == "local" for b in exceeded)
    ends = [e for e in _events(gw) if e["type"] == "exchange.end" and e.get("status") == 429]
    assert len(ends) == 2 and all("BudgetExceeded" in e["detail"] for e in ends)


async def test_two_replicas_with_two_workers_share_one_redis_and_never_exceed_the_limit(
    start_mcp_server, start_budgeted, issuer: DevIssuer, redis_server: RedisServer
) -> None:
    server = start_mcp_server("demo", json_response=True)
    policy = (
        BASICS
        + """
  - name: echo-budget
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
    limits:
      - {calls: 12, per: 1m}
"""
    )
    replicas = [start_budgeted([server], policy, workers=2, store=redis_server.url) for _ in range(2)]
    callers = ["alice", "bob", "carol"]
    sessions = [  # each caller: two sessions on each replica (Envoy spreads their streams over both workers)
        (who, gw, open_session(gw.url(), issuer.mint(who, aud=gw.endpoint)))
        for who in callers
        for gw in replicas
        for _ in range(2)
    ]

    async def one(client: httpx.AsyncClient, who: str, gw: Gateway, headers: dict[str, str], i: int) -> tuple:
        r = await client.post(gw.url(), json=_call("echo", {"text": f"{who}{i}"}, i), headers=headers)
        return who, r.status_code

    async with httpx.AsyncClient(timeout=30) as client:
        results = await asyncio.gather(
            *(one(client, who, gw, h, i) for i in range(8) for who, gw, h in sessions)  # 48 tries per caller
        )

    for who in callers:
        statuses = [s for w, s in results if w == who]
        assert statuses.count(200) == 12, (who, statuses)  # exactly the limit, summed over replicas and workers
        assert statuses.count(429) == len(statuses) - 12
    assert sum(1 for r in server.seen() if r["method"] == "tools/call") == 12 * len(callers)


async def test_redis_outage_closed_rule_503_open_rule_passes_recorded_then_counting_resumes(
    start_mcp_server, start_budgeted, issuer: DevIssuer, redis_server: RedisServer
) -> None:
    server = start_mcp_server("demo", json_response=True)
    policy = (
        BASICS
        + """
  - name: echo-closed
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
    limits:
      - {calls: 3, per: 1m}
  - name: add-open
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [add]}
    limits:
      - {calls: 3, per: 1m}
    on_store_error: open
"""
    )
    metrics_port = free_port()
    gw = start_budgeted([server], policy, store=redis_server.url, metrics_port=metrics_port)
    headers = open_session(gw.url(), issuer.mint("alice", aud=gw.endpoint))

    def post(tool: str, args: dict[str, Any]) -> httpx.Response:
        return httpx.post(gw.url(), json=_call(tool, args), headers=headers, timeout=10)

    assert post("echo", {"text": "before"}).status_code == 200
    redis_server.stop()
    down = post("echo", {"text": "down"})
    assert down.status_code == 503 and down.json()["error"]["message"] == "budget counter unavailable; request refused"
    assert post("add", {"a": 1, "b": 2}).status_code == 200  # on_store_error: open
    redis_server.start()  # a fresh, empty Redis on the same port

    assert [post("echo", {"text": str(i)}).status_code for i in range(4)] == [200, 200, 200, 429]
    metrics = _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    assert metrics[("mcp_extproc_budget_store_errors_total", (("outcome", "closed"),))] == 1
    assert metrics[("mcp_extproc_budget_store_errors_total", (("outcome", "open"),))] == 1
    assert metrics[("mcp_extproc_budget_refusals_total", (("rule", "echo-closed"),))] == 1
    assert metrics[("mcp_extproc_refusals_total", (("reason", "BudgetExceeded"), ("status", "429")))] == 1
    assert metrics[("mcp_extproc_refusals_total", (("reason", "BudgetUnavailable"), ("status", "503")))] == 1
    gw.stop()
    decisions = [e for e in _events(gw) if e["type"] == "policy.decision" and e.get("budget")]
    outcomes = [(e["rule"], e["allowed"], e["budget"]["outcome"]) for e in decisions]
    assert outcomes == [
        ("echo-closed", True, "counted"),
        ("echo-closed", False, "store-unavailable"),
        ("add-open", True, "store-unavailable"),
        ("echo-closed", True, "counted"),
        ("echo-closed", True, "counted"),
        ("echo-closed", True, "counted"),
        ("echo-closed", False, "exceeded"),
    ]
    assert decisions[2]["budget"]["on_store_error"] == "open" and decisions[1]["budget"]["on_store_error"] == "closed"
    assert [e["budget"]["limits"][0]["count"] for e in decisions[3:6]] == [1, 2, 3]  # counting resumed
    assert [r["tool"] for r in server.seen() if r["method"] == "tools/call"] == ["echo", "add", "echo", "echo", "echo"]


async def test_a_call_the_guardrail_modified_is_charged_once(start_mcp_server, start_authed, issuer, tmp_path) -> None:
    """The modified body is decided again by the policy, but the call spends its budget once, not twice."""
    from guardrail_server import GuardrailServer

    policy = (
        BASICS
        + """
  - name: echo-budget
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
    limits:
      - {calls: 2, per: 1m}
"""
    )
    with GuardrailServer({"echo": "modify"}) as guard:
        server = start_mcp_server("demo", json_response=True)
        entry = {"name": "demo", "upstream": server.upstream, "guardrail": {"url": guard.url, "timeout_ms": 2000}}
        gw = start_authed([server], policy=policy, gateway={"server_entries": [entry]})
        headers = open_session(gw.url(), issuer.mint("alice", aud=gw.endpoint))
        statuses = [
            httpx.post(gw.url(), json=_call("echo", {"text": str(i)}), headers=headers, timeout=10).status_code
            for i in range(3)
        ]
    assert statuses == [200, 200, 429]
    gw.stop()
    counted = [e["budget"] for e in _events(gw) if e["type"] == "policy.decision" and e.get("budget")]
    assert [(b["outcome"], b.get("limits", [{}])[0].get("count")) for b in counted] == [
        ("counted", 1), ("counted", 2), ("exceeded", None),
    ]  # fmt: skip


async def test_the_viewer_timeline_shows_each_decisions_budget(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path
) -> None:
    """The web viewer (Chromium) shows a counted call's counter and the refused call's limit on its timeline."""
    from playwright.async_api import async_playwright

    from extproc.launcher import wait_until
    from extproc.recording.manifest import generate_keys

    policy = (
        BASICS
        + """
  - name: echo-budget
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
    limits:
      - {calls: 1, per: 1m}
viewers:
  - {name: auditors, subjects: {groups: [audit]}, servers: [demo], sessions: all}
"""
    )
    key, _ = generate_keys(tmp_path / "keys")
    gateway = {
        "recording": {"signing_key": str(key), "segment_max_age_ms": 100, "completer_interval_s": 0.5},
        "audit": {"port": free_port(), "index_interval_ms": 100},
    }
    gw = start_authed([start_mcp_server("demo", json_response=True)], policy=policy, gateway=gateway)
    async with connect(gw.url(), token=issuer.mint("bob", aud=gw.endpoint), mode="legacy") as conn:
        await conn.client.call_tool("echo", {"text": "one"})
        with pytest.raises(Exception, match="echo-budget"):
            await conn.client.call_tool("echo", {"text": "two"})
        unit = recording_key(conn.session_id)
    viewer = issuer.mint("alice", aud=gw.endpoint, groups=["audit"])

    def indexed() -> bool:
        r = httpx.get(f"{gw.endpoint}/audit/api/sessions", headers={"authorization": f"Bearer {viewer}"})
        return {s["session"]: s["state"] for s in r.json()["sessions"]}.get(unit) == "complete"

    await asyncio.to_thread(wait_until, indexed, 30, "the session in the index", 0.2)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            ctx = await browser.new_context(extra_http_headers={"authorization": f"Bearer {viewer}"})
            page = await ctx.new_page()
            page.set_default_timeout(15_000)
            await page.goto(f"{gw.endpoint}/audit/")
            await page.click(f'tr[data-session="{unit}"] a')
            await page.wait_for_selector("#timeline li")
            decisions = page.locator('#timeline li[data-type="policy.decision"]', has_text="echo-budget")
            texts = [t or "" for t in await decisions.all_text_contents()]
        finally:
            await browser.close()
    assert len(texts) == 2, texts
    assert "budget: 1 of 1 calls per 1m (per caller)" in texts[0]
    assert "over budget: 1 calls per 1m (per caller), counter 1" in texts[1] and "denied" in texts[1]
