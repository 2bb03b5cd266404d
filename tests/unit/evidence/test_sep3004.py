"""SEP-3004: the proposal's own known-answer digests and the 23 vectors of its reference vector set (vendored in
tests/vectors/sep-3004/), reproduced by extproc/evidence/sep3004.py; and a recorded session exported as records
that verify, whose tampering is refused."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from recording_helpers import cli

from extproc.evidence import sep3004
from extproc.recording.events import ExchangeEnd, ExchangeStart, McpRequest, PolicyDecision
from extproc.recording.manifest import Signer, generate_keys
from extproc.recording.recorder import Recorder
from extproc.recording.spool import Spool
from extproc.recording.store.file import FileStore
from extproc.recording.writer import RecorderOptions

HERE = Path(__file__).resolve().parents[2] / "vectors" / "sep-3004"
FIX = json.loads((HERE / "fixtures.json").read_bytes())
VECTORS_TS = (HERE / "upstream" / "vectors.ts").read_text()


def _rec(name: str, prev: str | None = None) -> dict[str, Any]:
    rec = copy.deepcopy(FIX[name])
    if rec["previous_hash"] == "<rec1.event_hash>":
        rec["previous_hash"] = prev
    return sep3004.seal(rec)


REC1 = _rec("rec1")
REC2 = _rec("rec2", REC1["event_hash"])
BOTH = _rec("recBoth")
RS = _rec("recRS", REC1["event_hash"])


def test_fixtures_are_transcribed_from_the_vendored_vectors() -> None:
    def strings(v: Any) -> list[str]:
        if isinstance(v, dict):
            return [s for k, x in v.items() for s in [k, *strings(x)]]
        return [v] if isinstance(v, str) else []

    for name in ("rec1", "rec2", "recBoth", "recRS", "MANIFEST_GOOD"):
        for s in strings(FIX[name]):
            if s != "<rec1.event_hash>" and not s.startswith("55555555") and not s.startswith("aaaaaaaa"):
                assert s in VECTORS_TS, (name, s)
    assert FIX["KAT_HASH_CG"] in VECTORS_TS and FIX["KAT_HASH_2X"] in VECTORS_TS


def test_the_seps_two_extension_preimage_and_digest() -> None:
    text = (HERE / "sep-3004.md").read_text()
    block = text.split("The canonical form (§2.3) of the protected body is the exact byte string:", 1)[1]
    published = re.search(r"```\n(.*?)\n```", block, re.S).group(1)  # type: ignore[union-attr]
    assert sep3004.preimage(BOTH) == published
    assert hashlib.sha256(published.encode()).hexdigest() == FIX["KAT_HASH_2X"] == BOTH["event_hash"]
    assert FIX["KAT_HASH_2X"] in text


def test_the_reference_single_extension_preimage_and_digest() -> None:
    readme = (HERE / "upstream" / "README.md").read_text()
    published = re.search(r"printf '%s' '(.*?)' \| sha256sum", readme).group(1)  # type: ignore[union-attr]
    assert sep3004.preimage(REC1) == published
    assert REC1["event_hash"] == FIX["KAT_HASH_CG"]


def _set(rec: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    rec = copy.deepcopy(rec)
    target = rec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return rec


def _drop(rec: dict[str, Any], *path: str) -> dict[str, Any]:
    rec = copy.deepcopy(rec)
    target = rec
    for key in path[:-1]:
        target = target[key]
    del target[path[-1]]
    return rec


CG = ("extensions", "caller-governance")


def _differs(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [] if sep3004.preimage(a) != sep3004.preimage(b) else ["collided"]


def _same(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [] if sep3004.preimage(a) == sep3004.preimage(b) else ["differs"]


def _reordered() -> dict[str, Any]:
    sid = FIX["rec1"]["extensions"]["caller-governance"]["session_id"]
    cg = {"flagged": False, "purpose_declared": "reconcile June invoices", "invoked_by_principal_id": None}
    return {
        **{k: REC1[k] for k in reversed(list(REC1))},
        "extensions": {"caller-governance": {**cg, "session_id": sid}},
    }


def _emission() -> list[str]:
    required = ["session_start", "session_close", "session_expired", "session_rejected_closed"]
    ext = {"caller-governance": {"session_id": "s", "purpose_declared": "x"}}
    emitted = [{"event_type": et, "extensions": ext} for et in required]
    return [et for et in required if not any(r["event_type"] == et for r in emitted)]


def _kat() -> list[str]:
    return [] if (REC1["event_hash"], BOTH["event_hash"]) == (FIX["KAT_HASH_CG"], FIX["KAT_HASH_2X"]) else ["kat"]


# id -> (expected: conformant?, what the vector evaluates, returning its failures) — upstream/vectors.ts, in order.
VECTORS: dict[str, tuple[bool, Callable[[], list[str]]]] = {
    "V-REC1-good": (True, lambda: sep3004.check_skeleton(REC1)),
    "V-REC1-missing-core": (False, lambda: sep3004.check_skeleton(_drop(REC1, "previous_hash"))),
    "V-REC1-missing-extensions": (False, lambda: sep3004.check_skeleton(_drop(REC1, "extensions"))),
    "V-REC1-extension-required-field": (False, lambda: sep3004.check_extensions(_drop(REC1, *CG, "purpose_declared"))),
    "V-REC1-unregistered-extension": (
        False,
        lambda: sep3004.check_extensions(_set(REC1, ("extensions", "not-a-real-extension"), {"foo": "bar"})),
    ),
    "V-REC2-determinism": (True, lambda: _same(REC1, _reordered())),
    "V-REC2-injective-core": (True, lambda: _differs(REC1, _set(REC1, ("outcome",), "denied"))),
    "V-REC2-injective-extension": (True, lambda: _differs(REC1, _set(REC1, (*CG, "purpose_declared"), "exfiltration"))),
    "V-REC2-null-vs-empty": (True, lambda: _differs(_set(REC1, ("tool_name",), None), _set(REC1, ("tool_name",), ""))),
    "V-REC2-normalization": (
        True,
        lambda: _same(
            _set(REC1, (*CG, "purpose_declared"), "caf\u00e9 audit"),
            _set(REC1, (*CG, "purpose_declared"), "cafe\u0301 audit "),
        ),
    ),
    "V-REC2-control-char": (False, lambda: sep3004.check_hash(_set(REC1, (*CG, "purpose_declared"), "line1\nline2"))),
    "V-REC3-kat": (True, _kat),
    "V-REC4-good-chain": (True, lambda: sep3004.check_chain([REC1, REC2])),
    "V-REC4-tamper-core": (False, lambda: sep3004.check_chain([_set(REC1, ("outcome",), "denied"), REC2])),
    "V-REC4-tamper-purpose": (
        False,
        lambda: sep3004.check_chain([_set(REC1, (*CG, "purpose_declared"), "authorized maintenance"), REC2]),
    ),
    "V-REC4-delete-record": (False, lambda: sep3004.check_chain([REC2])),
    "V-REC5-emission": (True, _emission),
    "V-REC6-mixed-extension-chain": (True, lambda: sep3004.check_chain([REC1, RS])),
    "V-REC6-extension-fields-chained": (
        False,
        lambda: sep3004.check_chain([REC1, _set(RS, ("extensions", "runtime-security", "severity"), "low")]),
    ),
    "V-REC6-two-extension-record": (True, lambda: sep3004.check_hash(BOTH)),
    "V-REC6-two-extension-tamper": (
        False,
        lambda: sep3004.check_hash(_set(BOTH, ("extensions", "runtime-security", "severity"), "low")),
    ),
    "V-REC7-manifest-good": (True, lambda: sep3004.check_attestation(FIX["MANIFEST_GOOD"])),
    "V-REC7-manifest-bare": (False, lambda: sep3004.check_attestation({})),
}


def test_every_upstream_vector_is_reproduced() -> None:
    upstream = re.findall(r"id: '(V-REC[^']+)'", VECTORS_TS)
    assert len(upstream) == 23 and upstream == list(VECTORS)


@pytest.mark.parametrize("vector", list(VECTORS))
def test_upstream_vector(vector: str) -> None:
    conformant, evaluate = VECTORS[vector]
    expect = re.search(rf"id: '{re.escape(vector)}',.*?expect: '(\w+)'", VECTORS_TS, re.S).group(1)  # type: ignore[union-attr]
    assert conformant == (expect == "conformant")
    failures = evaluate()
    assert (not failures) == conformant, failures


@pytest.fixture
async def recorded(tmp_path: Path) -> tuple[Path, Path]:
    """A signed recording of two tools/call exchanges, one allowed and one denied, as the processor writes them."""
    key, pub = generate_keys(tmp_path / "keys")
    root = tmp_path / "rec"
    rec = Recorder(FileStore(root), Spool(root / ".spool", "w"), RecorderOptions(flush_interval=0.01),
                   signer=Signer.from_file(key))  # fmt: skip
    await rec.start()
    who = {"issuer": "https://id.example", "subject": "u-42", "username": "alice", "groups": [], "token_id": ""}
    for n, allowed in enumerate([True, False]):
        ex, t = f"e{n}", 1000.0 + n
        call = {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": "note", "arguments": {}}}
        rec.emit(ExchangeStart(session="sess-a", exchange=ex, time=t, method="POST", server="notes", principal=who))
        rec.emit(McpRequest(session="sess-a", exchange=ex, index=1, time=t + 0.1, messages=[call]))
        rec.emit(PolicyDecision(session="sess-a", exchange=ex, index=2, time=t + 0.2, allowed=allowed, rule="r",
                                reason="why", call="tools/call note", message_id=n))  # fmt: skip
        rec.emit(ExchangeEnd(session="sess-a", exchange=ex, index=3, time=t + 0.3, ends_session=n == 1))
        await rec.flushed()
    await rec.close()
    return root, pub


async def test_a_recorded_session_exports_as_records_that_verify(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    root, pub = recorded
    out = tmp_path / "sep.json"
    run = cli("sessions", "export", "sess-a", "--dir", str(root), "--public-key", str(pub), "--format", "sep-3004",
              "--out", str(out))  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    doc = json.loads(out.read_bytes())
    assert doc["format"] == "sep-3004" and doc["revision"] == sep3004.REVISION
    assert sep3004.check_attestation(doc["attestation"]) == []
    assert [(r["outcome"], r["tool_name"], r["occurred_at"]) for r in doc["records"]] == [
        ("allowed", "note", "1970-01-01T00:16:40.200Z"),
        ("denied", "note", "1970-01-01T00:16:41.200Z"),
    ]
    assert sep3004.check_chain(doc["records"]) == []
    lines = (root / "sess-a" / "w.jsonl").read_bytes().splitlines()
    evidence = doc["records"][1]["extensions"]["admission-control"]["evidence"]
    assert (
        evidence
        == "sha256:"
        + hashlib.sha256(lines[int(doc["records"][1]["extensions"]["admission-control"]["seq"])]).hexdigest()
    )
    for rec in doc["records"]:
        assert sep3004.check_skeleton(rec) == [] and sep3004.check_extensions(rec) == []


def test_records_of_decisions_name_tool_principal_and_the_line_they_came_from() -> None:
    who = {"issuer": "https://id.example", "subject": "u-42", "username": "alice"}
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "note", "arguments": {}}}
    events = [
        {"type": "exchange.start", "exchange": "e1", "session": "s", "time": 1.0, "principal": who, "server": "notes",
         "_writer": "w", "seq": 0, "_line": "a" * 64},
        {"type": "mcp.request", "exchange": "e1", "session": "s", "time": 1.0005, "messages": [call], "_writer": "w",
         "seq": 1, "_line": "b" * 64},
        {"type": "policy.decision", "exchange": "e1", "session": "s", "time": 1.0016, "allowed": False, "rule": "r",
         "reason": "no\nway", "call": "tools/call note", "message_id": 7, "_writer": "w", "seq": 2, "_line": "c" * 64},
        {"type": "exchange.end", "exchange": "e1", "session": "s", "time": 1.5, "outcome": "error", "detail": "boom",
         "_writer": "w", "seq": 3, "_line": "d" * 64},
    ]  # fmt: skip
    first, second = sep3004.records_of(events, "s")
    assert (first["outcome"], first["tool_name"], first["principal_id"]) == (
        "denied",
        "note",
        "https://id.example#u-42",
    )
    assert first["occurred_at"] == "1970-01-01T00:00:01.001Z" and first["previous_hash"] is None
    ext = first["extensions"]["admission-control"]
    assert ext["evidence"] == "sha256:" + "c" * 64 and ext["seq"] == "2" and ext["message_id"] == "7"
    assert ext["reason"] == "no\\u000away"  # a control character the SEP refuses, kept visible
    assert (second["outcome"], second["event_type"], second["previous_hash"]) == (
        "error",
        "exchange_failed",
        first["event_hash"],
    )
    assert sep3004.check_chain([first, second]) == []


async def test_a_tampered_session_is_not_exported(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    root, pub = recorded
    data = root / "sess-a" / "w.jsonl"
    data.write_bytes(data.read_bytes().replace(b'"why"', b'"WHY"', 1))
    out = tmp_path / "sep.json"
    run = cli("sessions", "export", "sess-a", "--dir", str(root), "--public-key", str(pub), "--format", "sep-3004",
              "--out", str(out))  # fmt: skip
    assert run.returncode == 1 and "does not verify" in run.stdout
    assert not out.exists()


def test_keys_are_written_as_json_stringify_writes_them_and_values_are_refused_or_normalized() -> None:
    # Node's JSON.stringify over these sorted keys gives exactly this (checked by hand: node -e …).
    doc = {"a\nb\u0001": "x", "\u00e9": True, 'q"\\': None}
    assert sep3004.canonicalize(doc) == '{"a\\nb\\u0001":"x","q\\"\\\\":null,"é":true}'
    assert sep3004.canonicalize({"k": " cafe\u0301 "}) == '{"k":"café"}'
    for bad in ({"k": "tab\there"}, {"k": 1}, {"k": 1.5}, {"k": "x" * 8193}):
        with pytest.raises(sep3004.NotConforming):
            sep3004.canonicalize(bad)
