"""The export sinks against real collectors on loopback: a file (rotated), an HEC endpoint checking token and JSON,
a syslog listener over TCP and TLS. Queues stay bounded while a collector is down, and drops are counted."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable
from pathlib import Path

from siem_receivers import HecReceiver, SyslogReceiver
from tls_certs import TestCA

from extproc.export.config import Delivery, FileSink, HecSink, SyslogSink
from extproc.export.sinks import FileOutput, HecOutput, SyslogOutput
from extproc.launcher import wait_until

FAST = Delivery(queue_size=50, batch_size=10, retry_initial_ms=20, retry_max_ms=100)


def _event(n: int, severity: int = 1) -> dict:
    return {
        "class_uid": 6003,
        "time": 1_700_000_000_000 + n,
        "severity_id": severity,
        "metadata": {"log_name": "exchanges", "uid": f"e{n}"},
        "unmapped": {"proof": {"session": "s-1", "writer": "w", "seq": n, "sha256": f"{n:064x}"}},
    }


async def _until(check: Callable[[], bool], what: str) -> None:
    """Wait on a condition (10 s at most) from a thread, so the loop keeps running the sink's task meanwhile."""
    await asyncio.to_thread(wait_until, check, 10.0, what)


async def test_file_sink_appends_json_lines_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "out" / "ocsf.jsonl"
    sink = FileOutput(FileSink(path=path, max_bytes=1024, keep=2), Delivery(batch_size=2))
    sink.start()
    for n in range(40):
        assert sink.offer(_event(n))
    await _until(lambda: sink.sent == 40, "40 events written")
    await sink.close()
    files = [path, path.with_name("ocsf.jsonl.1"), path.with_name("ocsf.jsonl.2")]
    assert all(f.exists() for f in files) and not path.with_name("ocsf.jsonl.3").exists()
    assert all(f.stat().st_size <= 1024 for f in files)
    kept = [json.loads(line)["metadata"]["uid"] for f in reversed(files) for line in f.read_text().splitlines()]
    assert kept == [f"e{n}" for n in range(40 - len(kept), 40)]  # the newest, in order; older ones rotated away


async def test_hec_gets_every_event_with_the_token(tmp_path: Path) -> None:
    token = tmp_path / "hec.token"
    token.write_text("s3cret-token\n")
    with HecReceiver("s3cret-token") as hec:
        sink = HecOutput(HecSink(url=hec.url, token_file=token, index="mcp"), FAST)
        sink.start()
        for n in range(25):
            sink.offer(_event(n))
        events = await asyncio.to_thread(hec.wait_for, 25)
        await sink.close()
    assert [e["metadata"]["uid"] for e in events] == [f"e{n}" for n in range(25)]
    assert {e["index"] for e in hec.envelopes} == {"mcp"} and hec.envelopes[0]["sourcetype"] == "ocsf:api_activity"
    assert hec.refused == [] and sink.sent == 25 and sink.dropped["queue_full"] == 0


async def test_hec_down_bounds_the_queue_retries_and_counts_drops_then_recovers(tmp_path: Path) -> None:
    token = tmp_path / "hec.token"
    token.write_text("t")
    with HecReceiver("t") as hec:
        hec.down = True
        sink = HecOutput(HecSink(url=hec.url, token_file=token), FAST)
        sink.start()
        accepted = [sink.offer(_event(n)) for n in range(80)]
        assert accepted == [True] * 50 + [False] * 30  # offer never waits: past the bound it drops, counted
        assert len(sink.queue) == 50 and sink.dropped["queue_full"] == 30
        await _until(lambda: sink.failures >= 3, "three failed attempts (retries with backoff)")
        assert hec.events == [] and len(sink.queue) == 50
        hec.down = False
        await _until(lambda: sink.sent == 50, "the queued events delivered once the collector is back")
        await sink.close()
    assert [e["metadata"]["uid"] for e in hec.events] == [f"e{n}" for n in range(50)]


async def test_hec_wrong_token_is_retried_and_never_delivered_a_refused_batch_is_dropped(tmp_path: Path) -> None:
    token = tmp_path / "hec.token"
    token.write_text("wrong")
    with HecReceiver("right") as hec:
        sink = HecOutput(HecSink(url=hec.url, token_file=token), FAST)
        sink.start()
        sink.offer(_event(1))
        await _until(lambda: sink.failures >= 2, "retries of a refused token")
        await sink.close(drain_within=0.1)
        assert hec.events == [] and 401 in hec.refused and sink.dropped["shutdown"] == 1
    token.write_text("right")
    with HecReceiver("right") as hec:
        hec.invalid = True  # answers 400, Splunk's "invalid data format": a retry would not help
        sink = HecOutput(HecSink(url=hec.url, token_file=token), FAST)
        sink.start()
        sink.offer(_event(1))
        await _until(lambda: sink.dropped["refused"] == 1, "the refused batch dropped and counted")
        hec.invalid = False
        sink.offer(_event(2))
        await _until(lambda: sink.sent == 1, "the next event delivered")
        await sink.close()
    assert [e["metadata"]["uid"] for e in hec.events] == ["e2"] and sink.failures == 0 and sink.sent == 1


async def test_syslog_over_tcp_rfc5424_with_the_proof_as_structured_data() -> None:
    with SyslogReceiver() as listener:
        sink = SyslogOutput(SyslogSink(address=f"127.0.0.1:{listener.port}"), FAST)
        sink.start()
        sink.offer(_event(1))
        sink.offer(_event(2, severity=3))
        messages = await asyncio.to_thread(listener.wait_for, 2)
        await sink.close()
    assert listener.errors == []
    first, second = messages
    assert first["pri"] == 13 * 8 + 6 and second["pri"] == 13 * 8 + 4  # log audit; info, warning for a denial
    assert first["app"] == "mcp-extproc" and first["msgid"] == "exchanges"
    assert first["timestamp"] == "2023-11-14T22:13:20.001Z"
    assert first["sd"] == f'[proof@32473 session="s-1" writer="w" seq="1" sha256="{1:064x}"]'
    assert first["event"]["metadata"]["uid"] == "e1"


async def test_syslog_over_tls_checks_the_collector_and_reconnects(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "ca")
    leaf = ca.issue("syslog", ["127.0.0.1"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(leaf.cert, leaf.key)
    with SyslogReceiver(tls=server_ctx) as listener:
        port = listener.port
        sink = SyslogOutput(SyslogSink(address=f"127.0.0.1:{port}", tls=True, ca_file=ca.pem), FAST)
        sink.start()
        sink.offer(_event(1))
        await asyncio.to_thread(listener.wait_for, 1)
    # The collector went away: sends fail and are retried (counted), nothing is lost from the queue.
    sink.offer(_event(2))
    await _until(lambda: sink.failures >= 1, "a failed send to a closed collector")
    assert len(sink.queue) == 1
    await sink.close(drain_within=0.1)
    assert sink.dropped["shutdown"] == 1


async def test_syslog_tls_refuses_a_collector_the_ca_did_not_sign(tmp_path: Path) -> None:
    ours, theirs = TestCA(tmp_path / "ours"), TestCA(tmp_path / "theirs", name="other CA")
    leaf = theirs.issue("syslog", ["127.0.0.1"])
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(leaf.cert, leaf.key)
    with SyslogReceiver(tls=server_ctx) as listener:
        sink = SyslogOutput(SyslogSink(address=f"127.0.0.1:{listener.port}", tls=True, ca_file=ours.pem), FAST)
        sink.start()
        sink.offer(_event(1))
        await _until(lambda: sink.failures >= 1, "a refused TLS handshake")
        await sink.close(drain_within=0.1)
    assert listener.messages == [] and "CERTIFICATE_VERIFY_FAILED" in sink.last_error


async def test_the_exporter_serializes_an_event_once_and_every_sink_queues_those_bytes(tmp_path: Path) -> None:
    """No nested dicts wait in a queue (a backlog would cost the garbage collector) and no sink encodes again."""
    from extproc.export.exporter import Exporter

    a = FileOutput(FileSink(path=tmp_path / "a.jsonl"), FAST)
    b = FileOutput(FileSink(path=tmp_path / "b.jsonl"), FAST)
    exporter = Exporter([a, b])
    exporter.offer(_event(1))
    [(data_a, *_)], [(data_b, *_)] = a.queue, b.queue
    assert isinstance(data_a, bytes) and data_a is data_b
    assert json.loads(data_a) == _event(1)
    exporter.start()
    await exporter.close()
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes() == data_a + b"\n"
