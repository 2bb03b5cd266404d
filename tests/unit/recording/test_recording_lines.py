"""Event lines: serialized once by orjson, identical to the dict form, and exact for what orjson refuses."""

from __future__ import annotations

import json

import pytest

from extproc.recording import jsonio
from extproc.recording.chain import chain_line, event_line
from extproc.recording.events import (
    Event,
    ExchangeEnd,
    ExchangeStart,
    McpRequest,
    ResponseChunk,
    is_synthetic_session,
    synthetic_session_id,
)
from extproc.recording.manifest import GENESIS


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(ExchangeStart(session="s", exchange="e", headers={"a": "é"}, principal={"u": 1}), id="start"),
        pytest.param(McpRequest(session="s", messages=[{"id": 1, "params": {"t": "line\nbreak\t\x01"}}]), id="req"),
        pytest.param(ResponseChunk(body={"raw": "\u2028 \U0001f600"}, size=3, time=1e16), id="unicode"),
        pytest.param(ExchangeEnd(session="s", ends_session=True, duration_ms=0.1), id="end"),
        pytest.param(Event(), id="base"),
    ],
)
def test_event_line_is_the_chain_line_of_the_dict(event: Event) -> None:
    fast = event_line(3, GENESIS, event)

    assert json.loads(fast) == json.loads(chain_line(3, GENESIS, event.to_dict()))
    assert fast.startswith(b'{"seq":3,"prev":"' + GENESIS.encode() + b'","type":"' + event.type.encode() + b'"')
    assert list(json.loads(fast)) == ["seq", "prev", *event.to_dict()]


@pytest.mark.parametrize(
    "messages",
    [
        pytest.param([{"id": 123456789012345678901234567890}], id="big-int"),
        pytest.param([{"id": 1, "text": "\ud800"}], id="lone-surrogate"),
        pytest.param([{1: "int key"}], id="int-key"),
    ],
)
def test_what_orjson_refuses_is_written_exactly(messages: list) -> None:
    line = event_line(0, GENESIS, McpRequest(session="s", messages=messages))

    assert json.loads(line)["messages"] == json.loads(json.dumps(messages))
    assert jsonio.loads(line)["messages"] == json.loads(json.dumps(messages))  # big ints come back as ints


def test_loads_reads_nan_and_big_ints_like_the_standard_library() -> None:
    raw = b'{"a":NaN,"b":123456789012345678901234567890,"c":"x"}'

    doc = jsonio.loads(raw)

    assert doc["b"] == 123456789012345678901234567890 and doc["a"] != doc["a"]
    with pytest.raises(ValueError):
        jsonio.loads(b"{not json")


def test_synthetic_sessions_are_named_in_one_place() -> None:
    sid = synthetic_session_id("ex-1")

    assert is_synthetic_session(sid) and not is_synthetic_session("server-session-1")
