"""The live exporter's OCSF bytes (export/template.py) against the reference dict (ocsf.exchange_event): the same
event for every shape of exchange, valid against the OCSF schema, and nothing kept from one exchange leaks into
another's."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from ocsf_schema import schema

from extproc.export import template
from extproc.export.ocsf import Fold, Pointer
from extproc.export.sinks import prepare
from extproc.export.template import exchange_entry

ALICE = {"issuer": "https://idp.test", "subject": "u-1", "username": "alice", "groups": ["dev", "ops"]}
BOB = {"issuer": "https://idp.test", "subject": "u-2", "username": "bob", "groups": ["dev"]}
TRACE = {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7", "parent": "header"}


def _call(n: int | str, tool: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": n, "method": "tools/call", "params": {"name": tool, "arguments": {}}}


def _decision(allowed: bool, rule: str = "policies/p.yaml:4") -> dict[str, Any]:
    return {"type": "policy.decision", "allowed": allowed, "rule": rule, "reason": "", "call": "tools/call"}


def _exchange(ex: str, principal: Any = ALICE, client: str = "192.0.2.7:40000", **kw: Any) -> list[dict[str, Any]]:
    start = {
        "type": "exchange.start", "exchange": ex, "time": 1_700_000_000.25, "client": client, "server": "github",
        "backend": kw.get("backend", ""), "method": kw.get("method", "POST"), "principal": principal,
        "headers": kw.get("headers", {}),
    }  # fmt: skip
    end = {
        "type": "exchange.end", "exchange": ex, "time": 1_700_000_000.5, "status": kw.get("status", 200),
        "outcome": kw.get("outcome", "complete"), "duration_ms": 250.4, "bytes_in": 10, "bytes_out": 20,
        "detail": kw.get("detail", ""),
    }  # fmt: skip
    if "trace" in kw:
        end["trace"] = kw["trace"]
    middle = [{"type": "mcp.request", "exchange": ex, "messages": kw["messages"]}] if "messages" in kw else []
    return [start, *middle, *[{**d, "exchange": ex} for d in kw.get("decisions", [])], *kw.get("more", []), end]


CASES = {
    "allowed, traced": _exchange("e1", messages=[_call(1, "list_repos")], decisions=[_decision(True)], trace=TRACE),
    "denied batch of two": _exchange(
        "e2",
        messages=[_call("a", "list_repos"), _call("b", "delete_repo")],
        decisions=[_decision(True), _decision(False, "policies/p.yaml:9")],
        status=403,
        outcome="denied",
        detail="PolicyDenied: no",
    ),
    "same caller, other decision": _exchange("e3", messages=[_call(3, "x")], decisions=[_decision(False)]),
    "other caller, same route": _exchange("e4", BOB, messages=[_call(4, "list_repos")], decisions=[_decision(True)]),
    "anonymous GET reset, no status": _exchange("e5", None, "", method="GET", status=0, outcome="reset"),
    "client traceparent, backend, v6": _exchange(
        "e6",
        BOB,
        "[2001:db8::1]:443",
        backend="b-1",
        headers={"traceparent": f"00-{'1' * 32}-{'2' * 16}-01"},
        messages=[{"jsonrpc": "2.0", "id": 6, "method": "resources/read", "params": {"uri": "file:///a"}}],
    ),
    "older record: trace.context": _exchange(
        "e7", messages=[_call(7, "x")], more=[{"type": "trace.context", "exchange": "e7", **TRACE}]
    ),
    "server error": _exchange("e8", messages=[_call(8, "x")], status=502, outcome="error", detail="upstream: 502"),
    "a group that is no string": _exchange("e9", {**BOB, "groups": [{"odd": 1}]}, messages=[_call(9, "x")]),
}


@pytest.mark.parametrize("events", CASES.values(), ids=CASES.keys())
def test_the_bytes_are_the_reference_event(events: list[dict[str, Any]]) -> None:
    reference, fast = Fold(), Fold(make=exchange_entry)
    for seq, ev in enumerate(events):
        at = Pointer("s-1", "w1", 2, 40 + seq, f"{seq:064x}")
        want, got = reference.feed(ev["type"], ev.get, at), fast.feed(ev["type"], ev.get, at)
    assert want is not None and got is not None
    data, *fields = got
    assert orjson.loads(data) == want
    assert tuple(fields) == prepare(want)[1:]
    assert schema().validate(orjson.loads(data)) == []


def test_kept_parts_start_over_when_full_and_never_mix_exchanges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(template, "KEEP", 2)
    fold, reference = Fold(make=exchange_entry), Fold()
    for n in range(6):  # more callers and clients than kept: every event is still its own
        who = {**ALICE, "subject": f"u-{n % 3}", "username": f"user{n % 3}"}
        for seq, ev in enumerate(_exchange(f"k{n}", who, f"10.0.0.{n % 4}:1", messages=[_call(n, f"t{n % 3}")])):
            at = Pointer("s", "w", 0, seq, "f" * 64)
            want, got = reference.feed(ev["type"], ev.get, at), fold.feed(ev["type"], ev.get, at)
        assert orjson.loads(got[0]) == want
    assert all(len(cache) <= 2 for cache in (template._actors, template._endpoints, template._resources))
