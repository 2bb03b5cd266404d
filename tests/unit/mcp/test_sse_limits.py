"""SSE events too big to hold: withheld (size and SHA-256) while the stream goes on, however the stream is cut."""

from __future__ import annotations

import hashlib
import random

import pytest

from extproc.mcp.body import ResponseBody, SseRewriter
from extproc.mcp.sse import BUDGET_SPENT, EVENT_TOO_BIG, HoldBudget, SseEvent, SseParser

SMALL_1 = b'event: message\nid: 1\ndata: {"jsonrpc":"2.0","method":"notifications/progress"}\n\n'
BIG = b'event: message\r\nid: 2\r\ndata: {"jsonrpc":"2.0","id":1,"result":"' + b"x" * 50_000 + b'"}\r\n\r\n'
SMALL_3 = b': keepalive\n\nid: 3\ndata: {"jsonrpc":"2.0","method":"notifications/message"}\r\r'
STREAM = SMALL_1 + BIG + SMALL_3


def _parse(chunks: list[bytes], parser: SseParser) -> list[SseEvent]:
    events: list[SseEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    last, tail = parser.finish()
    assert tail == b""
    return events + last


def _cuts(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(STREAM)), rng.randint(1, 60)))
    return [STREAM[a:b] for a, b in zip([0, *cuts], [*cuts, len(STREAM)], strict=True)]


@pytest.mark.parametrize("seed", range(40))
def test_an_event_over_the_limit_is_withheld_the_same_however_it_is_cut(seed: int) -> None:
    chunks = _cuts(seed) if seed else [STREAM]
    events = _parse(chunks, SseParser(max_event=4096))
    assert [e.id for e in events] == ["1", "2", "3"]
    big = events[1]
    assert big.withheld == EVENT_TOO_BIG and big.raw == b"" and big.data == ""
    assert (big.size, big.sha256) == (len(BIG), hashlib.sha256(BIG).hexdigest())
    assert big.event == "message"
    assert events[0] == SseParser().feed(SMALL_1)[0]  # the events around it are read as without a limit
    assert events[2].data == '{"jsonrpc":"2.0","method":"notifications/message"}'


def test_the_parser_never_holds_more_than_the_limit_plus_a_chunk() -> None:
    parser = SseParser(max_event=4096)
    for i in range(0, len(STREAM), 1000):
        parser.feed(STREAM[i : i + 1000])
        assert parser._head_len <= 4096 + 1000


def test_an_unterminated_event_over_the_limit_is_withheld_at_the_end() -> None:
    parser = SseParser(max_event=4096)
    cut = BIG[:-4]
    assert parser.feed(SMALL_1 + cut) == SseParser().feed(SMALL_1)
    events, tail = parser.finish()
    assert tail == b""
    assert [(e.withheld, e.size, e.sha256) for e in events] == [
        (EVENT_TOO_BIG, len(cut), hashlib.sha256(cut).hexdigest())
    ]


def test_the_worker_budget_is_shared_and_given_back() -> None:
    budget = HoldBudget(10_000)
    parsers = [SseParser(max_event=1 << 20, budget=budget) for _ in range(5)]
    head = BIG[:4000]
    for p in parsers:  # each holds 4,000 bytes of an unfinished event while it can
        p.feed(head)
        assert budget.held <= budget.limit
    assert budget.held == 8000  # two fit; the other three are withheld from here on
    results = [_parse([BIG[4000:], SMALL_3], p) for p in parsers]
    assert budget.held == 0
    reasons = [r[0].withheld for r in results]
    assert reasons == [None, None, BUDGET_SPENT, BUDGET_SPENT, BUDGET_SPENT]
    assert all(r[1].id == "3" for r in results)
    assert {r[0].sha256 for r in results[2:]} == {hashlib.sha256(BIG).hexdigest()}
    assert results[0][0].data.startswith('{"jsonrpc":"2.0","id":1')


def test_a_body_that_must_be_rewritten_is_refused_when_an_event_is_too_big() -> None:
    body = ResponseBody("text/event-stream", 4096, rewrite=lambda m: m, refusal=lambda: b"data: refused\n\n")
    out = []
    pieces = []
    for i in range(0, len(STREAM), 1000):
        p, released = body.feed(STREAM[i : i + 1000])
        pieces += p
        out.append(released)
    more, tail = body.end()
    pieces += more
    sent = b"".join(x or b"" for x in out) + tail
    assert body.refused
    assert sent == SMALL_1 + b"data: refused\n\n"  # nothing of the big event, nothing after it
    assert [p.event.withheld for p in pieces if p.event] == [None, EVENT_TOO_BIG, None]


def test_json_bodies_share_the_worker_budget() -> None:
    budget = HoldBudget(3000)
    first, second = (ResponseBody("application/json", 1 << 20, budget=budget) for _ in range(2))
    assert first.feed(b"x" * 2000) == ([], None)
    pieces, _ = second.feed(b"y" * 2000)  # cannot be held: goes on as raw chunks, recorded withheld
    assert second.oversized and "max_held_body_bytes" in second.oversized_reason
    assert [p.raw for p in pieces] == [b"y" * 2000]
    first.end()
    assert budget.held == 0


def test_events_before_the_one_too_big_still_reach_the_client() -> None:
    body = ResponseBody("text/event-stream", 4096, rewrite=lambda m: m, refusal=lambda: b"data: refused\n\n")
    _, released = body.feed(SMALL_1 + BIG[:5000])  # one chunk: a whole small event, then the start of a big one
    assert released == SMALL_1 + b"data: refused\n\n"
    pieces, released = body.feed(BIG[5000:] + SMALL_3)
    assert released == b""  # nothing more of the body
    more, tail = body.end()  # SMALL_3 ends in a bare CR: its event completes at the end of the stream
    assert tail == b""
    assert [(p.event.withheld, p.event.id) for p in pieces + more if p.event] == [(EVENT_TOO_BIG, "2"), (None, "3")]


ATOMS = [
    b"data: x",
    b"data:y",
    b"id: 1",
    b"event: e",
    b"retry: 10",
    b": c",
    b"",
    b"\xef\xbb\xbf",
    b"data",
    b"\r",
    b"\n",
    b"\r\n",
]


def test_random_streams_parse_the_same_however_cut_and_pass_a_rewriter_unchanged() -> None:
    rng = random.Random(2026)
    for _ in range(3000):
        stream = b"".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(stream) + 1), min(len(stream) + 1, rng.randint(0, 6))))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        whole = SseParser()
        expected = whole.feed(stream)
        last, tail = whole.finish()
        cut = SseParser()
        got = [e for c in chunks for e in cut.feed(c)]
        got_last, got_tail = cut.finish()
        assert (got + got_last, got_tail) == (expected + last, tail), chunks
        rewriter = SseRewriter(lambda m: m, b"never")
        assert b"".join(rewriter.feed(c)[0] for c in chunks) + rewriter.finish() == stream, chunks
