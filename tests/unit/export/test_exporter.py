"""The export tap on a real recorder: one OCSF event per exchange, valid against the OCSF 1.8.0 schema's attribute
dictionary (tests/support/ocsf_schema.py), whose proof pointer leads ``sessions verify --event`` to that event."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ocsf_schema import schema
from recording_helpers import cli, emit_exchanges
from siem_receivers import HecReceiver
from typer.testing import CliRunner

from extproc.audit.trail import AuditTrail
from extproc.authn.principal import Principal
from extproc.cli import app
from extproc.evidence.config import TransparencyLogConfig
from extproc.export.config import Delivery, Export, FileSink
from extproc.export.exporter import Exporter, attach
from extproc.export.ocsf import Fold, Pointer
from extproc.export.proof import locate
from extproc.export.sinks import FileOutput
from extproc.recording.config import Recording
from extproc.recording.events import ExchangeEnd, ExchangeStart, McpRequest, PolicyDecision, ResponseStart
from extproc.recording.manifest import Signer, generate_keys
from extproc.recording.recorder import Recorder
from extproc.recording.setup import build_runtime
from extproc.recording.spool import Spool
from extproc.recording.store import safe_key
from extproc.recording.store.file import FileStore
from extproc.recording.writer import RecorderOptions

ALICE = {"issuer": "https://idp.test", "subject": "u-1", "username": "alice", "groups": ["dev"], "token_id": "t"}


def _exchange(session: str, n: int, tool: str, allowed: bool, t: float) -> list:
    ex = f"{session}-e{n}"
    events = [
        ExchangeStart(
            session=session, exchange=ex, index=0, time=t, client="192.0.2.7:40000", server="github", method="POST",
            headers={"traceparent": f"00-{n:032x}-{n + 1:016x}-01"}, principal=ALICE,
        ),
        McpRequest(
            session=session, exchange=ex, index=1, time=t,
            messages=[{"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": tool, "arguments": {}}}],
        ),
        PolicyDecision(
            session=session, exchange=ex, index=2, time=t, allowed=allowed, rule="policies/p.yaml:4",
            reason="matched", call=f"tools/call {tool!r} on server 'github'",
        ),
    ]  # fmt: skip
    if allowed:
        events.append(ResponseStart(session=session, exchange=ex, index=3, time=t, status=200))
    events.append(
        ExchangeEnd(
            session=session, exchange=ex, index=len(events), time=t + 0.01,
            outcome="complete" if allowed else "denied", status=200 if allowed else 403, duration_ms=10.0,
        )
    )  # fmt: skip
    return events


async def test_one_valid_ocsf_event_per_exchange_whose_pointer_verify_finds(tmp_path: Path) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    store = FileStore(tmp_path / "rec")
    rec = Recorder(
        store, Spool(tmp_path / "spool", "w1"), RecorderOptions(flush_interval=0.01), signer=Signer.from_file(key)
    )
    out = tmp_path / "siem" / "ocsf.jsonl"
    exporter = Exporter([FileOutput(FileSink(path=out), Delivery())])
    rec.streams.tap = exporter.chained
    exporter.start()
    await rec.start()
    for n, (tool, allowed) in enumerate([("list_repos", True), ("delete_repo", False), ("get_issue", True)]):
        for ev in _exchange("s-1", n, tool, allowed, 1_700_000_000.0 + n):
            assert rec.emit(ev)
    trail = AuditTrail(rec)
    assert trail.record(Principal("https://idp.test", "u-9", "bob"), "198.51.100.1:9", "show", "s-1", {}, "ok", 200)
    await rec.flushed()
    await rec.close()
    await exporter.close()

    events = [json.loads(line) for line in out.read_text().splitlines()]
    exchanges = [e for e in events if e["metadata"]["log_name"] == "exchanges"]
    audits = [e for e in events if e["metadata"]["log_name"] == "audit"]
    assert [e["metadata"]["uid"] for e in exchanges] == ["s-1-e0", "s-1-e1", "s-1-e2"]  # one per exchange
    assert (
        len(audits) == 1
        and audits[0]["api"]["operation"] == "audit/show"
        and audits[0]["actor"]["user"]["name"] == "bob"
    )
    for e in events:
        assert schema().validate(e) == [], e
    denied = exchanges[1]
    assert denied["class_uid"] == 6003 and denied["status"] == "Failure" and denied["status_code"] == "403"
    assert denied["actor"]["user"] == {"uid": "u-1", "name": "alice", "groups": [{"name": "dev"}]}
    assert denied["actor"]["authorizations"] == [
        {"decision": "deny", "policy": {"name": "policies/p.yaml:4", "desc": "matched"}}
    ]
    assert denied["api"]["operation"] == "tools/call" and denied["resources"] == [
        {"name": "delete_repo", "type": "mcp.tool"}
    ]
    assert denied["src_endpoint"] == {"ip": "192.0.2.7", "port": 40000}
    assert denied["trace"]["uid"] == f"{1:032x}"
    assert exchanges[0]["status"] == "Success" and exchanges[0]["actor"]["authorizations"][0]["decision"] == "allow"

    # The pointer names exactly the exchange's end line, in a signed segment; verify proves it and says where.
    proof = denied["unmapped"]["proof"]
    found = locate(store, safe_key(proof["session"]), proof["sha256"])
    assert found is not None
    assert (found.writer, found.seq, found.line, found.segment) == (
        proof["writer"],
        proof["seq"],
        proof["line"],
        proof["segment"],
    )
    assert found.event["type"] == "exchange.end" and found.event["exchange"] == "s-1-e1"
    ok = cli(
        "sessions",
        "verify",
        "s-1",
        "--dir",
        str(tmp_path / "rec"),
        "--public-key",
        str(pub),
        "--event",
        proof["sha256"],
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert f"exchange.end of exchange s-1-e1 at w1 line {proof['line']}" in ok.stdout
    bad = cli("sessions", "verify", "s-1", "--dir", str(tmp_path / "rec"), "--event", "0" * 64)
    assert bad.returncode == 1 and "no event of session s-1 hashes to" in bad.stdout
    trail_proof = audits[0]["unmapped"]["proof"]
    assert locate(store, safe_key(trail_proof["session"]), trail_proof["sha256"]) is not None

    # The backfill folds the stored lines as the tap folded the chained ones: the same events, pointers included.
    again = cli("export", "backfill", "--dir", str(tmp_path / "rec"), "--since", "1700000000", "--until", "0s")
    assert again.returncode == 0, again.stderr
    backfilled = [json.loads(line) for line in again.stdout.splitlines()]
    key = lambda e: e["unmapped"]["proof"]["sha256"]  # noqa: E731
    assert sorted(backfilled, key=key) == sorted(events, key=key)
    window = cli(
        "export", "backfill", "--dir", str(tmp_path / "rec"), "--since", "1700000001", "--until", "1700000001.5"
    )
    assert [json.loads(line)["metadata"]["uid"] for line in window.stdout.splitlines()] == ["s-1-e1"]


def test_fold_forgets_nothing_it_was_not_given_and_never_raises_into_the_recorder() -> None:
    exporter = Exporter([], Fold())
    # An end without a start (the start was before this processor, or filtered): no event, no error.
    exporter.chained(ExchangeEnd(session="s", exchange="x"), "w", 0, 0, "a" * 64)
    # A malformed stored field (a message list holding garbage) is skipped, not fatal.
    exporter.chained(ExchangeStart(session="s", exchange="y", principal=None), "w", 0, 1, "b" * 64)
    exporter.chained(McpRequest(session="s", exchange="y", messages=["junk", {"method": 5}]), "w", 0, 2, "c" * 64)
    exporter.chained(ExchangeEnd(session="s", exchange="y", status=200), "w", 0, 3, "d" * 64)
    assert exporter.exported == 1 and exporter.errors == 0


@pytest.mark.parametrize(
    ("client", "endpoint"),
    [
        ("10.1.2.3:8080", {"ip": "10.1.2.3", "port": 8080}),
        ("[2001:db8::1]:443", {"ip": "2001:db8::1", "port": 443}),
        ("2001:db8::2", {"ip": "2001:db8::2"}),
        ("", {"name": "unknown"}),
        ("pod-a", {"name": "pod-a"}),
    ],
)
def test_source_endpoint_forms_validate(client: str, endpoint: dict) -> None:
    fold = Fold()
    at = Pointer("s", "w", 0, 0, "e" * 64)
    fold.feed("exchange.start", {"exchange": "x", "client": client, "time": 1.0}.get, at)
    out = fold.feed("exchange.end", {"exchange": "x", "status": 200, "outcome": "complete"}.get, at)
    assert out is not None and out["src_endpoint"] == endpoint
    assert schema().validate(out) == []


async def test_backfill_to_the_configured_sinks(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "rec")
    rec = Recorder(store, Spool(tmp_path / "spool", "w1"), RecorderOptions(flush_interval=0.01))
    await rec.start()
    for n in range(3):
        for ev in _exchange("s-2", n, "list_repos", True, 1_700_000_000.0 + n):
            assert rec.emit(ev)
    await rec.flushed()
    await rec.close()
    token = tmp_path / "hec.token"
    token.write_text("tok")
    with HecReceiver("tok") as hec:
        config = tmp_path / "gateway.yaml"
        config.write_text(
            "servers: [{name: github, upstream: '127.0.0.1:1'}]\nallow_anonymous: true\n"
            f"recording: {{directory: {tmp_path / 'rec'}}}\n"
            f"export: {{hec: {{url: '{hec.url}', token_file: {token}}}, delivery: {{linger_ms: 0}}}}\n"
        )
        done = cli("export", "backfill", "-c", str(config), "--since", "1700000000", "--to-sinks")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "backfill: 3 events delivered, 0 dropped" in done.stderr
        assert sorted(e["metadata"]["uid"] for e in hec.events) == ["s-2-e0", "s-2-e1", "s-2-e2"]


def test_each_exporting_process_has_a_file_of_its_own(tmp_path: Path) -> None:
    export = Export(file=FileSink(path=tmp_path / "ocsf.jsonl"))
    paths = [Exporter.from_config(export, w).sinks[0].config.path for w in ("", "worker-1", "audit")]  # type: ignore[attr-defined]
    assert [p.name for p in paths] == ["ocsf.jsonl", "ocsf.worker-1.jsonl", "ocsf.audit.jsonl"]


async def test_a_checkpoint_covering_a_segment_is_exported_and_verify_proves_the_pointer_through_it(
    tmp_path: Path,
) -> None:
    """The live exchange event is sent at once with ``checkpoint: null``; when the transparency log stores a
    checkpoint covering the segment, one ``proofs`` event per segment names it (log, size, leaf), and
    ``sessions verify --event`` proves the segment's leaf against that log's checkpoint."""
    key, pub = generate_keys(tmp_path / "keys")
    rec = Recording(
        directory=tmp_path / "rec",
        signing_key=key,
        flush_interval_ms=10,
        transparency_log=TransparencyLogConfig(origin="gw.test/log", checkpoint_interval_s=3600),
    )
    runtime = build_runtime(rec)
    out = tmp_path / "siem" / "ocsf.jsonl"
    exporter = attach(Export(file=FileSink(path=out)), runtime.recorder.streams, tlog=runtime.tlog)
    assert exporter is not None
    await runtime.start()
    await emit_exchanges(runtime.recorder, "s-cp", 2)
    await runtime.close()  # the last checkpoint: it covers both segments
    await exporter.close()

    events = [json.loads(line) for line in out.read_text().splitlines()]
    for e in events:
        assert schema().validate(e) == [], e
    exchanges = [e for e in events if e["metadata"]["log_name"] == "exchanges"]
    proofs = {
        (p["unmapped"]["proof"]["writer"], p["unmapped"]["proof"]["segment"]): p["unmapped"]["proof"]["checkpoint"]
        for p in events
        if p["metadata"]["log_name"] == "proofs"
    }
    assert len(exchanges) == 2 and all(e["unmapped"]["proof"]["checkpoint"] is None for e in exchanges)
    for e in exchanges:  # every pointer's segment has its follow-up, in the same session
        pointer = e["unmapped"]["proof"]
        checkpoint = proofs[(safe_key(pointer["writer"]), pointer["segment"])]
        assert checkpoint["log"].startswith("gw.test/log/") and checkpoint["size"] > checkpoint["leaf_index"] >= 0

    pointer = exchanges[1]["unmapped"]["proof"]
    args = ("sessions", "verify", "s-cp", "--dir", str(tmp_path / "rec"), "--public-key", str(pub))
    ok = CliRunner().invoke(app, [*args, "--event", pointer["sha256"]], env={"COLUMNS": "250"})  # in process: cheap
    assert ok.exit_code == 0, ok.output
    checkpoint = proofs[(safe_key(pointer["writer"]), pointer["segment"])]
    assert f"size {checkpoint['size']}: segment {pointer['segment']} is leaf {checkpoint['leaf_index']}" in ok.output
    assert "inclusion proven" in ok.output

    # A backfill reads the store after the fact: its pointers carry the checkpoint the follow-up named.
    again = CliRunner().invoke(app, ["export", "backfill", "--dir", str(tmp_path / "rec"), "--since", "900"])
    assert again.exit_code == 0, again.output
    backfilled = [json.loads(line) for line in again.stdout.splitlines() if line.startswith("{")]
    assert [e["unmapped"]["proof"]["checkpoint"] for e in backfilled] == [
        proofs[(safe_key(e["unmapped"]["proof"]["writer"]), e["unmapped"]["proof"]["segment"])] for e in exchanges
    ]

    # A tile rewritten after the fact: the signed manifests still verify, the checkpoint's proof does not.
    [tile] = list((tmp_path / "rec" / ".tlog").glob("*/tile/0/000.p/*"))
    tile.write_bytes(bytes(32) + tile.read_bytes()[32:])
    bad = CliRunner().invoke(app, [*args, "--event", pointer["sha256"]], env={"COLUMNS": "250"})
    assert bad.exit_code == 1 and "FAIL" in bad.output and "checkpoint of segment" in bad.output, bad.output

    # No checkpoint names the segment (yet): the event itself is proven; the checkpoint is a note, not a failure.
    for index in (tmp_path / "rec" / ".tlog").glob("*/where/s-cp/*"):
        index.unlink()
    later = CliRunner().invoke(app, [*args, "--event", pointer["sha256"]], env={"COLUMNS": "250"})
    assert later.exit_code == 0 and "is in no checkpoint yet" in later.output, later.output
