"""Request state of multi-round-trip requests: sealed to caller and server toward the client, opened on retry."""

from __future__ import annotations

import json

import pytest

from extproc.authn.principal import Principal
from extproc.authn.state_binding import RequestStateNotYours
from extproc.errors import InvalidRequest
from extproc.mcp.request_state import RequestState

ALICE = Principal(issuer="https://idp", subject="alice", username="alice")
BOB = Principal(issuer="https://idp", subject="bob", username="bob")
KEY = b"k" * 32


def _retry(state: object) -> tuple[dict, bytes]:
    message = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "t", "requestState": state}}
    return message, json.dumps(message).encode()


def test_the_server_gets_back_exactly_the_state_it_issued() -> None:
    alice = RequestState(ALICE, "demo/", KEY)
    sealed = alice.seal({"id": 1, "result": {"resultType": "input_required", "requestState": "opaque-é"}})
    value = sealed["result"]["requestState"]
    assert value != "opaque-é"
    forwarded = alice.open(*_retry(value))
    assert forwarded is not None and json.loads(forwarded)["params"]["requestState"] == "opaque-é"


def test_another_caller_or_server_cannot_replay_it() -> None:
    value = RequestState(ALICE, "demo/", KEY).seal({"result": {"requestState": "s"}})["result"]["requestState"]
    with pytest.raises(RequestStateNotYours):
        RequestState(BOB, "demo/", KEY).open(*_retry(value))
    with pytest.raises(RequestStateNotYours):
        RequestState(ALICE, "other/", KEY).open(*_retry(value))


def test_no_state_nothing_to_open_and_a_non_string_is_refused() -> None:
    alice = RequestState(ALICE, "demo/", KEY)
    message = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "t"}}
    assert alice.open(message, json.dumps(message).encode()) is None
    with pytest.raises(InvalidRequest):
        alice.open(*_retry(42))
    assert alice.seal({"result": {"content": []}}) == {"result": {"content": []}}  # nothing to seal
