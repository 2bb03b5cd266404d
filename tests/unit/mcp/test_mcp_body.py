"""Rewriting messages in response bodies: whole JSON documents and SSE events streamed across any chunking."""

from __future__ import annotations

import json
import random

import pytest

from extproc.mcp.body import SseRewriter, rewrite_json
from extproc.mcp.sse import SseParser, format_event


def _mark(m: dict) -> dict:
    result = m.get("result")
    if isinstance(result, dict) and "requestState" in result:
        return {**m, "result": {**result, "requestState": "sealed:" + result["requestState"]}}
    return m


STREAM = (
    b": keepalive\n\n"
    b'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}\n\n'
    b"event: message\r\nid: 7\r\n"
    b'data: {"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required","requestState":"abc"}}\r\n\r\n'
    b'data: {"jsonrpc":"2.0","id":2,"result":{"x":"h\xc3\xa9"}}\n\n'
)


def _through(chunks: list[bytes]) -> tuple[bytes, list]:
    rw = SseRewriter(_mark, b'"requestState"')
    out = bytearray()
    events = []
    for c in chunks:
        released, evs = rw.feed(c)
        out += released
        events += evs
    out += rw.finish()
    return bytes(out), events


def _expected() -> bytes:
    return STREAM.replace(
        b'event: message\r\nid: 7\r\ndata: {"jsonrpc":"2.0","id":1,"result":{"resultType":"input_required",'
        b'"requestState":"abc"}}\r\n\r\n',
        format_event(
            json.dumps(
                {"jsonrpc": "2.0", "id": 1, "result": {"resultType": "input_required", "requestState": "sealed:abc"}},
                separators=(",", ":"),
            ),
            "message",
            "7",
        ),
    )


def test_only_events_with_state_are_rewritten() -> None:
    out, events = _through([STREAM])
    assert out == _expected()
    assert [json.loads(e.data).get("id") for e in events] == [None, 1, 2]  # recorded as the server sent them
    assert b'"requestState":"abc"' in events[1].raw


@pytest.mark.parametrize("seed", range(40))
def test_any_chunking_gives_the_same_stream(seed: int) -> None:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 12)))
    chunks = [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]
    out, _ = _through(chunks)
    assert out == _expected()


def test_split_event_is_held_until_complete() -> None:
    rw = SseRewriter(_mark, b'"requestState"')
    first, _ = rw.feed(b'data: {"jsonrpc":"2.0","id":1,"res')
    assert first == b""
    second, events = rw.feed(b'ult":{"requestState":"s"}}\n\n')
    assert b"sealed:s" in second and len(events) == 1


def test_unfinished_tail_is_released_untouched_at_the_end() -> None:
    out, events = _through([b'data: {"id":1}\n\ndata: {"unfinished"'])
    assert out == b'data: {"id":1}\n\ndata: {"unfinished"'
    assert len(events) == 1


def test_format_event_round_trips_through_the_parser() -> None:
    raw = format_event("line1\nline2", "note", "42")
    [ev] = SseParser().feed(raw)
    assert (ev.data, ev.event, ev.id) == ("line1\nline2", "note", "42")


def test_rewrite_json_documents_and_batches() -> None:
    body = b'{"jsonrpc":"2.0","id":1,"result":{"requestState":"a"}}'
    assert json.loads(rewrite_json(body, _mark))["result"]["requestState"] == "sealed:a"
    batch = b'[{"jsonrpc":"2.0","id":1,"result":{}},{"jsonrpc":"2.0","id":2,"result":{"requestState":"b"}}]'
    assert json.loads(rewrite_json(batch, _mark))[1]["result"]["requestState"] == "sealed:b"
    untouched = b'{"jsonrpc":"2.0", "id":1, "result":{}}'
    assert rewrite_json(untouched, _mark) is untouched  # unchanged bytes pass exactly as sent
    assert rewrite_json(b"not json", _mark) == b"not json"


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_numbers_are_not_json_in_response_bodies(number: bytes) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"result":{"requestState":"a","v":%s}}' % number
    assert rewrite_json(body, _mark) is body  # not JSON: passed as sent, never re-encoded as if it were
    event = b"data: " + body + b"\n\n"
    out, events = _through([event])
    assert out == event and [e.data.encode() for e in events] == [body]
