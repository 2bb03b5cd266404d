"""Bounded storage through real Envoy: per-server recording levels (metadata, off) and file-store retention
running in the processor, whose deletions are recorded and verify like any session."""

from __future__ import annotations

import json

from gateway_parts import open_session

from extproc.demo.mcp_client import call_tool
from extproc.launcher import wait_until
from extproc.recording.bounds import RETENTION_SESSION
from extproc.recording.replay import load_session

SECRET = "payload-that-must-not-be-stored-81f2"


async def test_metadata_level_keeps_no_payload_and_off_keeps_nothing(start_mcp_server, start_gateway) -> None:
    meta, quiet = start_mcp_server("meta"), start_mcp_server("quiet")
    gw = start_gateway(
        [meta, quiet],
        recording={"servers": {"meta": "metadata", "quiet": "off"}, "off_acknowledged": "load-balancer probes"},
    )
    assert (await call_tool(gw.url("meta"), "echo", {"text": SECRET}))["content"][0]["text"] == SECRET
    assert (await call_tool(gw.url("quiet"), "echo", {"text": SECRET}))["content"][0]["text"] == SECRET
    gw.stop()  # flush

    store = gw.store
    sessions = [load_session(store, k) for k in store.list_sessions()]
    servers = {e.get("server") for s in sessions for e in s.events if e["type"] == "exchange.start"}
    assert servers == {"meta"}, "nothing of the `off` server is stored"
    stored = "".join(json.dumps(s.events) for s in sessions)
    assert SECRET not in stored
    calls = [m for s in sessions for e in s.events if e["type"] == "mcp.request" for m in e["messages"]]
    tool_calls = [m for m in calls if m.get("method") == "tools/call"]
    assert tool_calls and all(m["params"] == {"name": "echo"} for m in tool_calls)  # the tool, not its arguments
    assert all(not s.problems for s in sessions)
    log = gw.log.read_text()
    assert "recording OFF for server(s) quiet" in log and "load-balancer probes" in log


def test_retention_deletes_old_sessions_and_records_why(start_mcp_server, start_gateway) -> None:
    gw = start_gateway(
        [start_mcp_server("demo")],
        recording={"retention": {"max_age_days": 2 / 86400, "interval_s": 0.2}, "segment_max_age_ms": 100},
    )
    headers = open_session(gw.url())
    first = headers["mcp-session-id"]
    store = gw.store

    def deleted() -> list[dict]:
        if RETENTION_SESSION not in store.list_sessions():
            return []
        return [e for e in load_session(store, RETENTION_SESSION).events if e["type"] == "retention.deleted"]

    wait_until(lambda: any(e["reason"] == "age" for e in deleted()), 30, "retention to delete the idle session")
    gone = deleted()[0]
    assert gone["deleted_session"] not in store.list_sessions()
    assert gone["manifests_sha256"] and gone["bytes"] > 0 and first
    gw.stop()
    record = load_session(store, RETENTION_SESSION)
    assert not record.problems, record.problems
