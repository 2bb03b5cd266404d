"""OpenTelemetry through real Envoy, the mcp SDK client and server, and a real OTLP/HTTP receiver: the client's
traceparent reaches the upstream server as the gateway's upstream span, and the exported tree is the documented
one; the exchange's OCSF event carries the same trace."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from gateway_parts import recording_key
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from otlp_receiver import OtlpReceiver

from extproc.demo.mcp_client import connect
from extproc.launcher import free_port, wait_until

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"


async def test_client_trace_reaches_the_upstream_and_the_span_tree_is_exported(
    start_mcp_server, start_authed, issuer, tmp_path: Path
) -> None:
    server = start_mcp_server("demo")
    out = tmp_path / "ocsf.jsonl"
    with OtlpReceiver() as otlp:
        gw = start_authed(
            [server],
            gateway={
                "telemetry": {"endpoint": otlp.endpoint, "service_name": "gw-under-test"},
                "export": {"file": {"path": str(out)}},
            },
        )
        traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        token = issuer.mint("alice", aud=gw.endpoint)
        async with connect(gw.url(), token=token, headers={"traceparent": traceparent}) as conn:
            await conn.client.call_tool("echo", {"text": "traced"})
        gw.stop()  # the tracer provider shuts down: every span is exported
        root = otlp.wait_for("tools/call echo")

    assert otlp.bad == []
    assert root["trace_id"] == CLIENT_TRACE and root["parent_span_id"] == CLIENT_SPAN
    assert root["kind"] == Span.SPAN_KIND_SERVER and root["service"] == "gw-under-test"
    assert root["attributes"]["mcp.method.name"] == "tools/call" and root["attributes"]["gen_ai.tool.name"] == "echo"
    assert root["attributes"]["mcp_extproc.outcome"] == "complete"
    children = {s["name"]: s for s in otlp.spans if s["parent_span_id"] == root["span_id"]}
    assert set(children) == {"authenticate", "policy", "recording commit", "upstream"}
    assert children["upstream"]["kind"] == Span.SPAN_KIND_CLIENT

    # The SDK server got the gateway's upstream span as its parent, in the client's trace.
    [call] = [r for r in server.seen() if r["tool"] == "echo"]
    assert call["headers"]["traceparent"] == f"00-{CLIENT_TRACE}-{children['upstream']['span_id']}-01"

    # The recording and the SIEM event name the same trace and span: traces lead to recordings and back.
    [event] = [json.loads(line) for line in out.read_text().splitlines() if '"echo"' in line]
    assert event["trace"]["uid"] == CLIENT_TRACE and event["trace"]["span"]["uid"] == root["span_id"]
    assert root["attributes"]["mcp_extproc.recording"] == event["unmapped"]["mcp"]["session"]
    events = gw.session(event["unmapped"]["mcp"]["session"]).events
    traced = [e["trace"] for e in events if e["type"] == "exchange.end" and "trace" in e]
    assert "trace.context" not in {e["type"] for e in events}  # the ids ride on exchange.end
    assert {t["trace_id"] for t in traced} == {CLIENT_TRACE}
    assert children["upstream"]["span_id"] in {t["upstream_span_id"] for t in traced}


VIEWER_POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
viewers:
  - name: team-a-sees-alpha
    subjects: {groups: [team-a]}
    servers: [alpha]
    sessions: all
"""


async def test_viewer_links_the_exchange_to_its_trace(start_mcp_server, start_authed, issuer, tmp_path: Path) -> None:
    async_api = pytest.importorskip("playwright.async_api")
    with OtlpReceiver() as otlp:
        gateway = {
            "telemetry": {"endpoint": otlp.endpoint, "trace_link": "https://tempo.example/trace/{trace_id}?x=1"},
            "audit": {"port": free_port(), "index_interval_ms": 100, "client_id": "audit-viewer"},
        }
        gw = start_authed([start_mcp_server("alpha")], policy=VIEWER_POLICY, gateway=gateway)
        token = issuer.mint("bob", aud=gw.endpoint)
        headers = {"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"}
        async with connect(gw.url("alpha"), token=token, headers=headers) as conn:
            await conn.client.call_tool("echo", {"text": "traced"})
            session = conn.session_id
        key = recording_key(session, "alpha")
        viewer = issuer.mint("alice", aud=gw.endpoint, groups=["team-a"])

        def indexed() -> bool:
            r = httpx.get(f"{gw.endpoint}/audit/api/sessions", headers={"authorization": f"Bearer {viewer}"})
            return any(s["session"] == key for s in r.json()["sessions"])

        await asyncio.to_thread(wait_until, indexed, 30, "the session in the index", 0.2)
        async with async_api.async_playwright() as pw:
            browser = await pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            try:
                page = await (await browser.new_context()).new_page()
                page.set_default_timeout(15_000)
                await page.goto(f"{gw.endpoint}/audit/")
                await page.click("#login")
                await page.fill("#username", "alice")
                await page.fill("#groups", "team-a")
                await page.click("#sign-in")
                await page.wait_for_selector(f'tr[data-session="{key}"]')
                await page.click(f'tr[data-session="{key}"] a')
                links = page.locator('#timeline li[data-type="exchange.end"] a.trace')
                await links.first.wait_for()
                hrefs = {await links.nth(i).get_attribute("href") for i in range(await links.count())}
            finally:
                await browser.close()
    assert hrefs == {f"https://tempo.example/trace/{CLIENT_TRACE}?x=1"}
