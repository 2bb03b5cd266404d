"""Payloads sealed per subject: what stays readable, what opens with the key, what an erasure leaves."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from extproc.errors import ConfigError
from extproc.policy.capture import Capture
from extproc.recording.events import ExchangeEnd, ExchangeStart, GuardrailVerdict, McpRequest, McpResponse
from extproc.recording.key_stores import FileKek, FileKeyStore
from extproc.recording.manifest import Signer, generate_keys
from extproc.recording.shred import (
    Keyring,
    PayloadErased,
    PayloadSealer,
    _outline,
    erasure_record,
    open_events,
    subject_id,
)

ALICE = {"issuer": "https://idp", "subject": "alice", "username": "alice"}
BOB = {"issuer": "https://idp", "subject": "bob", "username": "bob"}
RESULT = {"jsonrpc": "2.0", "id": 3, "result": {"x": "s3cr3t"}}
CALL = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "s3cr3t"}}}


@pytest.fixture
def keyring(tmp_path: Path) -> Keyring:
    (tmp_path / "kek").write_text("cd" * 32)
    return Keyring(FileKeyStore(tmp_path / "keys"), FileKek(tmp_path / "kek"))


def _exchange(sealer: PayloadSealer, ex: str, principal: dict[str, Any] | None) -> list[dict[str, Any]]:
    events = [
        ExchangeStart(session="s", exchange=ex, index=0, principal=principal, path="/mcp?q=1", headers={"a": "b"}),
        McpRequest(session="s", exchange=ex, index=1, messages=[CALL], body={"raw": json.dumps(CALL)}, size=9),
        McpResponse(
            session="s", exchange=ex, index=2, messages=[{"jsonrpc": "2.0", "id": 3, "result": {"x": "s3cr3t"}}]
        ),
        ExchangeEnd(session="s", exchange=ex, index=3),
    ]
    for ev in events:
        sealer.seal(ev)
    return [json.loads(json.dumps(ev.to_dict())) for ev in events]  # as stored and read back


def test_sealed_events_keep_who_and_what_and_open_with_the_key(keyring: Keyring) -> None:
    stored = _exchange(PayloadSealer(keyring), "e1", ALICE)
    assert "s3cr3t" not in json.dumps(stored)
    assert stored[0]["principal"] == ALICE and stored[0]["path"] == "/mcp"
    assert stored[1]["messages"] == [{"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo"}}]
    open_events(stored, keyring)
    assert stored[1]["messages"] == [CALL] and stored[1]["body"] == {"raw": json.dumps(CALL)}
    assert stored[0]["headers"] == {"a": "b"} and stored[0]["path"] == "/mcp?q=1"


def test_anonymous_exchanges_are_not_sealed(keyring: Keyring) -> None:
    stored = _exchange(PayloadSealer(keyring), "e1", None)
    assert stored[1]["messages"] == [CALL]


def test_a_ciphertext_moved_to_another_event_does_not_open(keyring: Keyring) -> None:
    stored = _exchange(PayloadSealer(keyring), "e1", ALICE)
    stored[2]["body"] = stored[1]["body"]  # the request's sealed payload pasted into the response
    open_events(stored, keyring)
    assert "does not decrypt" in stored[2]["unreadable"]


def test_without_the_key_store_payloads_say_so(keyring: Keyring) -> None:
    stored = _exchange(PayloadSealer(keyring), "e1", ALICE)
    open_events(stored, None)
    assert stored[1]["unreadable"] == "no key-store access" and "s3cr3t" not in json.dumps(stored)


def test_erasure_destroys_one_subjects_keys_and_readers_see_the_signed_record(keyring: Keyring, tmp_path: Path) -> None:
    sealer = PayloadSealer(keyring)
    alice, bob = _exchange(sealer, "e1", ALICE), _exchange(sealer, "e2", BOB)
    key, _ = generate_keys(tmp_path / "sig")
    sid, destroyed = keyring.erase("https://idp#alice")
    assert sid == subject_id("https://idp#alice") and len(destroyed) == 1
    ev = PayloadErased(
        subject="https://idp#alice", subject_id=sid, keys=destroyed, by="dpo", reason="art. 17", time=5.0
    )
    keyring.store.put_erasure(sid, erasure_record(ev, Signer.from_file(key)))

    fresh = Keyring(keyring.store, keyring.kek)  # another process: nothing cached
    open_events(alice, fresh)
    open_events(bob, fresh)
    assert alice[1]["erased"] == {"time": 5.0, "by": "dpo", "reason": "art. 17"} and "s3cr3t" not in json.dumps(alice)
    assert bob[1]["messages"] == [CALL]
    assert json.loads(keyring.store.erasure(sid) or b"{}")["sig"]  # signed with the recording key


def test_a_new_key_after_erasure_is_a_new_key(keyring: Keyring) -> None:
    before, _ = keyring.for_writing("https://idp#alice")
    keyring.erase("https://idp#alice")
    after, _ = keyring.for_writing("https://idp#alice")
    assert before != after  # the erased key is never brought back


@pytest.mark.parametrize("content", ["short", "zz" * 32])
def test_a_bad_kek_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "kek").write_text(content)
    with pytest.raises(ConfigError, match="kek_file"):
        FileKek(tmp_path / "kek")


def test_a_long_running_reader_and_writer_stop_using_a_key_erased_elsewhere(keyring: Keyring) -> None:
    sealer = PayloadSealer(keyring)  # the processor
    reader = Keyring(keyring.store, keyring.kek)  # the audit service
    first = _exchange(sealer, "e1", ALICE)
    open_events(copy := json.loads(json.dumps(first)), reader)
    assert copy[1]["messages"] == [CALL]  # the reader has unwrapped (and cached) alice's key

    Keyring(keyring.store, keyring.kek).erase("https://idp#alice")  # `mcp-extproc erase`, another process

    open_events(first, reader)
    assert "s3cr3t" not in json.dumps(first) and "unreadable" in first[1]
    assert keyring.revalidate() == 1  # the processor's background round forgets the erased key
    later = _exchange(sealer, "e2", ALICE)
    open_events(later, reader)
    assert later[1]["messages"] == [CALL]  # alice's new exchanges are readable, under a new key


def test_a_guardrails_modified_arguments_are_sealed(keyring: Keyring) -> None:
    sealer = PayloadSealer(keyring)
    start = ExchangeStart(session="s", exchange="g", index=0, principal=ALICE)
    verdict = GuardrailVerdict(session="s", exchange="g", index=1, verdict="modify", arguments={"text": "s3cr3t"})
    for ev in (start, verdict):
        sealer.seal(ev)
    stored = [json.loads(json.dumps(ev.to_dict())) for ev in (start, verdict)]
    assert "s3cr3t" not in json.dumps(stored) and stored[1]["verdict"] == "modify"
    open_events(stored, keyring)
    assert stored[1]["arguments"] == {"text": "s3cr3t"}


OUTLINED = [
    CALL,
    RESULT,
    {"jsonrpc": "2.0", "id": 4, "method": "prompts/get", "params": {"name": "p", "arguments": {"a": "b"}}},
    {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": 7}},  # a name that is not a string
    {"jsonrpc": "2.0", "id": 6, "method": "resources/read", "params": {"uri": "file:///secret"}},
    {"jsonrpc": "2.0", "id": 7, "result": {"isError": True, "content": []}},
    {"jsonrpc": "2.0", "id": 8, "result": {"isError": "yes"}},
    {"jsonrpc": "2.0", "id": 9, "result": ["not", "an", "object"]},
    {"jsonrpc": "2.0", "id": 10, "error": {"code": -32602, "message": "s3cr3t", "data": {"x": 1}}},
    {"jsonrpc": "2.0", "id": 11, "error": "not an object"},
    {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}},
    {"id": 12, "method": "tools/call", "params": "not an object"},
    ["a", "batch", "element", "that", "is", "not", "an", "object"],
    "text",
    {},
]


@pytest.mark.parametrize("msg", OUTLINED, ids=[f"m{i}" for i in range(len(OUTLINED))])
def test_the_sealers_outline_is_the_metadata_capture_level(msg: Any) -> None:
    assert _outline(msg) == Capture("metadata").message(msg)


def test_nonces_never_repeat_across_the_counters_wrap(keyring: Keyring) -> None:
    sealer = PayloadSealer(keyring)
    sealer._nonce |= 0xFFFFFFFF - 2  # three nonces before the 32-bit counter wraps
    nonces = [sealer._next_nonce() for _ in range(6)]
    assert len(set(nonces)) == 6 and all(len(n) == 12 for n in nonces)
    assert nonces[3][:8] != nonces[2][:8] and nonces[3][8:] == bytes(4)  # a fresh prefix, the counter from 0


def test_every_seal_uses_a_fresh_nonce_and_the_documented_form(keyring: Keyring) -> None:
    stored = _exchange(PayloadSealer(keyring), "e1", ALICE) + _exchange(PayloadSealer(keyring), "e2", ALICE)
    seals = [json.loads(ev["headers"]["sealed"]) for ev in stored if "headers" in ev]
    seals += [ev["body"]["sealed"] for ev in stored if "sealed" in ev.get("body", {})]
    assert len(seals) == 6 and {tuple(s) for s in seals} == {("v", "alg", "key", "ct")}
    assert len({base64.b64decode(s["ct"])[:12] for s in seals}) == 6


def test_a_key_id_with_json_characters_still_seals_headers_that_open(keyring: Keyring) -> None:
    keyring.for_writing("https://idp#alice")  # creates alice's key, then renamed as a foreign store might name it
    [folder] = [p for p in keyring.store.root.iterdir() if p.is_dir()]  # type: ignore[attr-defined]
    [key] = list(folder.glob("*.json"))
    key.rename(folder / 'we"ird\\.json')
    fresh = Keyring(keyring.store, keyring.kek)
    stored = _exchange(PayloadSealer(fresh), "e1", ALICE)
    assert json.loads(stored[0]["headers"]["sealed"])["key"].endswith('/we"ird\\')
    open_events(stored, fresh)
    assert stored[0]["headers"] == {"a": "b"}
