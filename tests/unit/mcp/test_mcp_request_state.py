"""Request state of multi-round-trip requests: sealed to caller and server toward the client, opened on retry."""

from __future__ import annotations

import json

import pytest

from extproc.authn.principal import Principal
from extproc.authn.state_binding import RequestStateNotYours
from extproc.errors import InvalidRequest
from extproc.mcp.jsonrpc import parse_body
from extproc.mcp.request_state import RequestState

ALICE = Principal(issuer="https://idp", subject="alice", username="alice")
BOB = Principal(issuer="https://idp", subject="bob", username="bob")
KEY = b"k" * 32


def _retry(state: object) -> dict:
    return {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "t", "requestState": state}}


def test_the_server_gets_back_exactly_the_state_it_issued() -> None:
    alice = RequestState(ALICE, "demo/", KEY)
    sealed = alice.seal({"id": 1, "result": {"resultType": "input_required", "requestState": "opaque-é"}})
    value = sealed["result"]["requestState"]
    assert value != "opaque-é"
    forwarded = alice.open(_retry(value))
    assert forwarded is not None and json.loads(forwarded)["params"]["requestState"] == "opaque-é"


def test_another_caller_or_server_cannot_replay_it() -> None:
    value = RequestState(ALICE, "demo/", KEY).seal({"result": {"requestState": "s"}})["result"]["requestState"]
    with pytest.raises(RequestStateNotYours):
        RequestState(BOB, "demo/", KEY).open(_retry(value))
    with pytest.raises(RequestStateNotYours):
        RequestState(ALICE, "other/", KEY).open(_retry(value))


def test_no_state_nothing_to_open_and_a_non_string_is_refused() -> None:
    alice = RequestState(ALICE, "demo/", KEY)
    message = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "t"}}
    assert alice.open(message) is None
    with pytest.raises(InvalidRequest):
        alice.open(_retry(42))
    assert alice.seal({"result": {"content": []}}) == {"result": {"content": []}}  # nothing to seal


def _sealed(state: str = "server-state") -> str:
    return RequestState(ALICE, "demo/", KEY).seal({"result": {"requestState": state}})["result"]["requestState"]


@pytest.mark.parametrize(
    "key",
    [
        pytest.param("request\\u0053tate", id="escaped-key"),
        pytest.param("\\u0072\\u0065questState", id="escaped-start"),
        pytest.param("requestState", id="plain-key"),
    ],
)
def test_state_is_opened_only_at_params_request_state(key: str) -> None:
    # The sealed value spelled plainly in an argument and escaped at the key: a search of the bytes for the sealed
    # value would open it in the argument, where the policy saw (and the server must get) the sealed value.
    value = _sealed()
    escaped = "".join(f"\\u{ord(c):04x}" for c in value)
    body = (
        '{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo",'
        f'"arguments":{{"text":"{value}"}},"{key}":"{escaped}"}}}}'
    ).encode()
    parsed = parse_body(body, strict=True)
    assert parsed.error is None, parsed.error

    forwarded = RequestState(ALICE, "demo/", KEY).open(parsed.messages[0])

    assert forwarded is not None
    sent = json.loads(forwarded)
    assert sent["params"]["requestState"] == "server-state"
    assert sent["params"]["arguments"] == {"text": value}  # what the policy decided on, unchanged
    assert parse_body(forwarded, strict=True).messages[0] == {
        **parsed.messages[0],
        "params": {**parsed.messages[0]["params"], "requestState": "server-state"},
    }


@pytest.mark.parametrize("key", ["RequestState", "requeststate", "REQUESTSTATE", "reque\u017ftState"])
def test_a_folded_spelling_of_the_key_is_refused(key: str) -> None:
    message = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "t", key: _sealed()}}
    with pytest.raises(InvalidRequest, match="ambiguous"):
        RequestState(ALICE, "demo/", KEY).open(message)


def test_a_lone_surrogate_elsewhere_in_the_request_is_kept() -> None:
    parsed = parse_body(
        b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","arguments":{"s":"\\ud800"},'
        b'"requestState":"%s"}}' % _sealed().encode(),
        strict=True,
    )
    forwarded = RequestState(ALICE, "demo/", KEY).open(parsed.messages[0])
    assert forwarded is not None and json.loads(forwarded)["params"]["arguments"]["s"] == "\ud800"
