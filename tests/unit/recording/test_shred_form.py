"""Sealed form 2 (docs/payload-protection.md): one seal per event over what the reader cannot rebuild (a body's
messages are re-parsed from its raw bytes, exchange.start's path is its ``:path`` header); form 1 still opens."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path
from typing import Any

import orjson
import pytest

from extproc.mcp.jsonrpc import parse_body
from extproc.recording.events import (
    Event,
    ExchangeStart,
    GuardrailVerdict,
    McpRequest,
    McpResponse,
    ResponseChunk,
    ResponseStart,
    body_fields,
)
from extproc.recording.key_stores import FileKek, FileKeyStore
from extproc.recording.shred import ALGORITHM, Keyring, PayloadSealer, _aad, _outline, open_events

ALICE = {"issuer": "https://idp", "subject": "alice"}
START = {":path": "/mcp?t=1", ":method": "POST", "x-tenant": "acme"}


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    (tmp_path / "kek").write_text("ab" * 32)
    return Keyring(FileKeyStore(tmp_path / "keys"), FileKek(tmp_path / "kek"))


def _request(raw: bytes) -> McpRequest:
    """mcp.request as exchange/request.py builds it at capture ``full`` (the processor parses requests strictly)."""
    parsed = parse_body(raw, strict=True)
    return McpRequest(messages=list(parsed.messages), error=parsed.error, batch=parsed.batch, body=body_fields(raw))


def _response(raw: bytes) -> McpResponse:
    """mcp.response of a JSON document as recording/pieces.py builds it (parsed leniently)."""
    parsed = parse_body(raw)
    return McpResponse(messages=list(parsed.messages), error=parsed.error, body=body_fields(raw))


CALL = (
    b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"caf\xc3\xa9 s3cr3t"}}}'
)
EVENTS: dict[str, Any] = {
    "request": lambda: _request(CALL),
    "batch": lambda: _request(b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"x/y"}]'),
    "big-integer": lambda: _request(b'{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"ping"}'),
    "escapes": lambda: _request(b'{"jsonrpc":"2.0","id":"\\ud800\\u00e9","method":"m","params":["s3cr3t"]}'),
    "duplicate-key-request": lambda: _request(b'{"jsonrpc":"2.0","id":1,"id":2,"method":"s3cr3t"}'),
    "duplicate-key-response": lambda: _response(b'{"jsonrpc":"2.0","id":1,"id":2,"result":{"t":"s3cr3t"}}'),
    "not-json": lambda: _request(b"s3cr3t{"),
    "not-utf8": lambda: _request(b'{"s3cr3t":"\xff"}'),
    "response": lambda: _response(b'{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"s3cr3t"}]}}'),
    "sse-event": lambda: McpResponse(messages=[{"jsonrpc": "2.0", "id": 1, "result": {"t": "s3cr3t"}}], sse_id="1"),
    # messages kept (no raw body) holding what orjson cannot write: sealed through the exact fallback, never lost
    "sse-unusual-json": lambda: McpResponse(messages=[{"id": 2**70, "result": {"t": "s3cr3t\ud800"}}], sse_id="2"),
    "redacted": lambda: McpRequest(
        messages=[{"id": 1, "method": "m", "params": "[s3cr3t]"}], body={"raw_redacted": True}
    ),
    "chunk": lambda: ResponseChunk(body={"raw": "s3cr3t"}),
    "start": lambda: ExchangeStart(path=START[":path"], headers=dict(START), principal=ALICE),
    "start-path-differs": lambda: ExchangeStart(path="/mcp?s3cr3t", headers={"x": "s3cr3t"}, principal=ALICE),
    "response-start": lambda: ResponseStart(status=200, headers={"x-s3cr3t": "1"}),
    "guardrail": lambda: GuardrailVerdict(verdict="modify", arguments={"text": "s3cr3t"}),
}


def _sealed(keyring: Keyring, ev: Event) -> list[dict[str, Any]]:
    """``ev`` (as one event of alice's exchange) sealed, stored and read back; the exchange's start first."""
    sealer = PayloadSealer(keyring)
    start = ExchangeStart(session="s", exchange="x", index=0, principal=ALICE)
    sealer.seal(start)
    ev.session, ev.exchange, ev.index = "s", "x", 1
    sealer.seal(ev)
    return [json.loads(json.dumps(e.to_dict())) for e in (start, ev)]


@pytest.mark.parametrize("name", EVENTS)
def test_every_event_opens_to_exactly_what_was_sealed(keyring: Keyring, name: str) -> None:
    ev = EVENTS[name]()
    ev.session, ev.exchange, ev.index = "s", "x", 1
    want = json.loads(json.dumps(ev.to_dict()))  # as it would be stored unsealed
    stored = _sealed(keyring, ev)
    assert "s3cr3t" not in json.dumps(stored)
    open_events(stored, keyring)
    assert stored[1] == want


def _plain(keyring: Keyring, ev: dict[str, Any]) -> dict[str, Any]:
    seal = ev["body"]["sealed"] if "body" in ev else json.loads(ev["headers"]["sealed"])
    assert seal["v"] == 2
    blob = base64.b64decode(seal["ct"])
    cipher = keyring.for_reading(seal["key"])
    assert cipher is not None
    doc = json.loads(cipher.decrypt(blob[:12], blob[12:], _aad(ev, ev["type"])))
    assert isinstance(doc, dict)
    return doc


def test_a_raw_body_is_sealed_without_its_parsed_messages(keyring: Keyring) -> None:
    for name in ("request", "batch", "response"):
        assert _plain(keyring, _sealed(keyring, EVENTS[name]())[1]) == {"body": EVENTS[name]().body}
    for name in ("sse-event", "redacted", "not-json"):  # no raw body to re-parse, or no messages parsed from it
        assert set(_plain(keyring, _sealed(keyring, EVENTS[name]())[1])) == {"messages", "body"}


def test_the_start_path_is_sealed_only_when_it_is_not_the_path_header(keyring: Keyring) -> None:
    start = ExchangeStart(session="s", exchange="x", index=0, principal=ALICE, path="/mcp?t=1", headers=dict(START))
    PayloadSealer(keyring).seal(start)
    stored = json.loads(json.dumps(start.to_dict()))
    assert _plain(keyring, stored) == {"headers": START} and stored["path"] == "/mcp"


def _form1(keyring: Keyring, ev: Event, fields: dict[str, Any]) -> dict[str, Any]:
    """An event as the form-1 sealer wrote it (before this change): every sealed field, no ``v``."""
    ref, cipher = keyring.for_writing("https://idp#alice")
    doc: dict[str, Any] = json.loads(json.dumps(ev.to_dict()))
    nonce = secrets.token_bytes(12)
    ct = base64.b64encode(nonce + cipher.encrypt(nonce, orjson.dumps(fields), _aad(doc, doc["type"]))).decode()
    seal = {"alg": ALGORITHM, "key": ref, "ct": ct}
    if isinstance(ev, ExchangeStart):
        doc.update(headers={"sealed": json.dumps(seal)}, path=doc["path"].partition("?")[0])
    else:
        doc.update(body={"sealed": seal}, messages=[_outline(m) for m in doc["messages"]])
    return doc


def test_form_1_records_still_open(keyring: Keyring) -> None:
    req, start = EVENTS["request"](), EVENTS["start"]()
    old = [
        _form1(keyring, start, {"headers": start.headers, "path": start.path}),
        _form1(keyring, req, {"messages": req.messages, "body": req.body}),
    ]
    assert "s3cr3t" not in json.dumps(old)
    open_events(old, keyring)
    assert old == [json.loads(json.dumps(e.to_dict())) for e in (start, req)]


def test_a_form_this_reader_does_not_know_is_unreadable(keyring: Keyring) -> None:
    stored = _sealed(keyring, EVENTS["request"]())
    stored[1]["body"]["sealed"]["v"] = 3
    open_events(stored, keyring)
    assert "sealed form 3" in stored[1]["unreadable"] and "s3cr3t" not in json.dumps(stored)


def test_reopened_messages_are_the_bodys_json_whatever_the_parser_accepts_today(keyring: Keyring) -> None:
    """A record written by a processor that accepted a body today's strict parser refuses (a case-folded key):
    its messages are the body's JSON value, defined by the bytes alone, never emptied by a later parser."""
    raw = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","Method":"x","params":{"name":"t","s3cr3t":1}}'
    assert parse_body(raw, strict=True).error  # refused today
    ev = McpRequest(messages=[json.loads(raw)], body=body_fields(raw))  # as that processor recorded it
    stored = _sealed(keyring, ev)
    open_events(stored, keyring)
    assert stored[1]["messages"] == [json.loads(raw)]
