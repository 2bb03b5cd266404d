"""Prometheus metrics of a processor behind real Envoy: refusals, decisions, exchanges, recording and identity."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from extproc.demo.mcp_client import connect
from extproc.launcher import free_port, wait_until

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, server/discover, ping, "notifications/*", tools/list, http/get,
                                        http/delete]}
  - name: echo
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
"""


def _scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    families = text_string_to_metric_families(httpx.get(url, timeout=5).text)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


async def test_metrics_count_what_happened(start_mcp_server, start_authed, issuer) -> None:
    metrics_port = free_port()
    gw = start_authed([start_mcp_server("demo")], policy=POLICY, gateway={"processor": {"metrics_port": metrics_port}})
    assert httpx.post(gw.url(), json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, timeout=10).status_code == 401
    async with connect(gw.url(), token=issuer.mint("alice", aud=gw.endpoint)) as conn:
        await conn.client.call_tool("echo", {"text": "hi"})
        try:
            await conn.client.call_tool("add", {"a": 1, "b": 2})
        except Exception:  # the SDK raises the gateway's JSON-RPC error: denied by default
            pass

    m = _scrape(f"http://127.0.0.1:{metrics_port}/metrics")
    assert m[("mcp_extproc_refusals_total", (("reason", "MissingToken"), ("status", "401")))] == 1
    assert m[("mcp_extproc_refusals_total", (("reason", "PolicyDenied"), ("status", "403")))] == 1
    assert m[("mcp_extproc_policy_decisions_total", (("allowed", "false"), ("server", "demo")))] == 1
    assert m[("mcp_extproc_policy_decisions_total", (("allowed", "true"), ("server", "demo")))] >= 3
    assert m[("mcp_extproc_exchanges_total", (("outcome", "denied"), ("server", "demo")))] == 1
    assert m[("mcp_extproc_exchanges_total", (("outcome", "complete"), ("server", "demo")))] >= 3
    assert m[("mcp_extproc_recording_healthy", ())] == 1.0
    assert m[("mcp_extproc_recording_events_written_total", ())] > 0
    assert m[("mcp_extproc_recording_events_lost_total", ())] == 0
    assert m[("mcp_extproc_policy_reload_failures_total", ())] == 0
    assert m[("mcp_extproc_jwks_fetches_total", (("issuer", issuer.url),))] >= 1


async def test_latency_histograms_backlog_and_jwks_age(start_mcp_server, start_authed, issuer) -> None:
    metrics_port = free_port()
    gw = start_authed([start_mcp_server("demo")], policy=POLICY, gateway={"processor": {"metrics_port": metrics_port}})
    async with connect(gw.url(), token=issuer.mint("alice", aud=gw.endpoint)) as conn:
        await conn.client.call_tool("echo", {"text": "hi"})

    url = f"http://127.0.0.1:{metrics_port}"
    m = _scrape(f"{url}/metrics")
    for phase in ("request_headers", "request_body", "response_headers", "response_body"):
        assert m[("mcp_extproc_message_seconds_count", (("phase", phase),))] >= 1, phase
    assert m[("mcp_extproc_policy_decision_seconds_count", ())] >= 3  # discover, (list), call: one body each
    complete = (("outcome", "complete"), ("server", "demo"))
    assert m[("mcp_extproc_exchange_duration_seconds_count", complete)] >= 3
    assert m[("mcp_extproc_exchange_duration_seconds_sum", complete)] > 0
    assert 0 <= m[("mcp_extproc_jwks_age_seconds", (("issuer", issuer.url),))] < 60
    assert m[("mcp_extproc_jwks_keys_loaded", (("issuer", issuer.url),))] == 1
    assert m[("mcp_extproc_recording_queued_events", ())] >= 0
    assert m[("mcp_extproc_recording_disk_jobs_waiting", ())] >= 0
    assert m[("mcp_extproc_recording_store_failing", ())] == 0
    assert m[("mcp_extproc_recording_unavailable", (("reason", "disk_full"),))] == 0

    def uploaded() -> bool:  # the file store takes segments once they are sealed (age 2 s or the stream's end)
        return _scrape(f"{url}/metrics").get(("mcp_extproc_recording_upload_seconds_count", ()), 0) >= 1

    wait_until(uploaded, 20, "a segment upload to be observed")
    m = _scrape(f"{url}/metrics")
    assert m[("mcp_extproc_recording_uploads_total", ())] >= 1
    assert httpx.get(f"{url}/ready", timeout=5).status_code == 200
    assert httpx.get(f"{url}/live", timeout=5).status_code == 200
    assert httpx.get(f"{url}/nope", timeout=5).status_code == 404


async def test_not_ready_while_the_issuer_has_given_no_keys(start_mcp_server, start_authed, issuer) -> None:
    metrics_port = free_port()
    issuer.stop()  # the processor starts (serving 503s, never open) but must not be sent traffic
    gw = start_authed([start_mcp_server("demo")], policy=POLICY, gateway={"processor": {"metrics_port": metrics_port}})
    ready = httpx.get(f"http://127.0.0.1:{metrics_port}/ready", timeout=5)
    assert ready.status_code == 503 and f"no signing keys from {issuer.url}" in ready.text
    assert gw.endpoint
