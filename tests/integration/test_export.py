"""SIEM export through real Envoy and the mcp SDK: every exchange reaches the file, HEC and syslog as one valid OCSF
event whose proof pointer `sessions verify` proves; a collector that is down costs MCP traffic nothing."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from ocsf_schema import schema
from prometheus_client.parser import text_string_to_metric_families
from recording_helpers import cli
from siem_receivers import HecReceiver, SyslogReceiver

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


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def _recorded_exchanges(gw) -> set[str]:
    store = gw.store
    out = set()
    for key in store.list_sessions():
        for stream in store.read_session(key).values():
            for line in stream.data.splitlines():
                ev = json.loads(line)
                if ev.get("type") == "exchange.end":
                    out.add(ev["exchange"])
    return out


async def _traffic(gw, issuer) -> None:
    async with connect(gw.url(), token=issuer.mint("alice", aud=gw.endpoint)) as conn:
        await conn.client.call_tool("echo", {"text": "hi"})
        try:
            await conn.client.call_tool("add", {"a": 1, "b": 2})  # denied by default
        except Exception:
            pass


async def test_every_exchange_reaches_file_hec_and_syslog_as_valid_ocsf_with_a_proof(
    start_mcp_server, start_authed, issuer, tmp_path: Path
) -> None:
    token = tmp_path / "hec.token"
    token.write_text("hec-token")
    out = tmp_path / "siem" / "ocsf.jsonl"
    with HecReceiver("hec-token") as hec, SyslogReceiver() as syslog:
        export = {
            "file": {"path": str(out)},
            "hec": {"url": hec.url, "token_file": str(token)},
            "syslog": {"address": f"127.0.0.1:{syslog.port}"},
        }
        # The audit service too (issue 26 item 1): its accesses go to the same sinks (the file: one of its own).
        audit = {"port": free_port(), "index_interval_ms": 100, "client_id": "audit-viewer"}
        gw = start_authed([start_mcp_server("demo")], policy=POLICY, gateway={"export": export, "audit": audit})
        await _traffic(gw, issuer)
        viewer = {"authorization": f"Bearer {issuer.mint('bob', aud=gw.endpoint)}"}
        assert httpx.get(f"{gw.endpoint}/audit/api/sessions", headers=viewer, timeout=10).status_code == 200
        gw.stop()  # the recorder drains, then the sinks: every exchange's event is out
        exchanges = _recorded_exchanges(gw)
        events = [json.loads(line) for line in out.read_text().splitlines()]
        assert sorted(e["metadata"]["uid"] for e in events) == sorted(exchanges)  # one per exchange, no more
        received = [e for e in hec.events if e["metadata"]["log_name"] == "exchanges"]
        assert sorted(e["metadata"]["uid"] for e in received) == sorted(exchanges)
        sent = [m["event"] for m in syslog.messages]
        assert sorted(e["metadata"]["uid"] for e in sent if e["metadata"]["log_name"] == "exchanges") == sorted(
            exchanges
        )
        assert hec.refused == [] and syslog.errors == []
        audits = [json.loads(line) for line in out.with_name("ocsf.audit.jsonl").read_text().splitlines()]
        [listed] = [e for e in audits if e["api"]["operation"] == "audit/list"]
        assert listed["actor"]["user"]["name"] == "bob" and listed["metadata"]["log_name"] == "audit"
        for got in (hec.events, sent):
            assert [e["metadata"]["uid"] for e in got if e["api"]["operation"] == "audit/list"] == [
                listed["metadata"]["uid"]
            ]
        events += audits

    for e in events:
        assert schema().validate(e) == [], e
    (denied,) = [e for e in events if e["status_id"] == 2 and e["api"]["operation"] == "tools/call"]
    assert denied["actor"]["user"]["name"] == "alice" and denied["actor"]["idp"]["issuer"] == issuer.url
    assert denied["resources"] == [{"name": "add", "type": "mcp.tool"}]
    assert denied["actor"]["authorizations"][0]["decision"] == "deny" and denied["status_code"] == "403"
    (allowed,) = [e for e in events if e.get("resources") == [{"name": "echo", "type": "mcp.tool"}]]
    assert allowed["status"] == "Success" and "echo" in allowed["actor"]["authorizations"][0]["policy"]["name"]

    proof = denied["unmapped"]["proof"]
    verified = cli("sessions", "verify", proof["session"], "-c", str(gw.stack.config), "--event", proof["sha256"])
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"exchange.end of exchange {denied['metadata']['uid']}" in verified.stdout


async def test_a_collector_down_bounds_its_queue_counts_drops_and_leaves_mcp_traffic_alone(
    start_mcp_server, start_authed, issuer, tmp_path: Path
) -> None:
    token = tmp_path / "hec.token"
    token.write_text("hec-token")
    out = tmp_path / "ocsf.jsonl"
    metrics = free_port()
    with HecReceiver("hec-token") as hec:
        hec.down = True
        export = {
            "file": {"path": str(out)},
            "hec": {"url": hec.url, "token_file": str(token)},
            "delivery": {"queue_size": 2, "batch_size": 1, "retry_initial_ms": 20, "retry_max_ms": 50},
        }
        gw = start_authed(
            [start_mcp_server("demo")],
            policy=POLICY,
            gateway={"export": export, "processor": {"metrics_port": metrics}},
        )
        for _ in range(3):
            await _traffic(gw, issuer)  # every call answered as usual: the SDK raises on anything else
        wait_until(lambda: len(out.read_text().splitlines()) >= 9 if out.exists() else False, 20, "the file sink")
        m = _scrape(metrics)
        assert m[("mcp_extproc_export_queued", (("sink", "hec"),))] == 2
        assert m[("mcp_extproc_export_dropped_total", (("reason", "queue_full"), ("sink", "hec")))] >= 7
        assert m[("mcp_extproc_export_failures_total", (("sink", "hec"),))] >= 1
        assert m[("mcp_extproc_export_dropped_total", (("reason", "queue_full"), ("sink", "file")))] == 0
        assert hec.events == []
        hec.down = False
        hec.wait_for(2)  # what was queued goes out once the collector is back
        wait_until(lambda: _scrape(metrics)[("mcp_extproc_export_sent_total", (("sink", "hec"),))] >= 2, 10, "sent")
