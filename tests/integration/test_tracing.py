"""OpenTelemetry through real Envoy, the mcp SDK client and server, and a real OTLP/HTTP receiver: the client's
traceparent reaches the upstream server as the gateway's upstream span, and the exported tree is the documented
one; the exchange's OCSF event carries the same trace."""

from __future__ import annotations

import json
from pathlib import Path

from opentelemetry.proto.trace.v1.trace_pb2 import Span
from otlp_receiver import OtlpReceiver

from extproc.demo.mcp_client import connect

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
    context = [e for e in gw.session(event["unmapped"]["mcp"]["session"]).events if e["type"] == "trace.context"]
    assert {c["trace_id"] for c in context} == {CLIENT_TRACE}
