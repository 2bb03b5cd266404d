"""SSE framing: the same events come out however the stream is cut into chunks."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from extproc.mcp.sse import SseEvent, SseParser, format_event, parse_event

# A stream with everything MCP servers send: priming event with only an id, comments/keepalives, named events,
# multi-line data, a field without a space after the colon, non-ASCII text, and an unterminated tail.
_LINES = [
    "id: 0",
    "data:",
    "",
    ": keepalive",
    "",
    "event: message",
    "id: 1",
    'data: {"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}',
    "",
    ": comment inside an event",
    "data: line one",
    "data:line two",
    "data:  leading space kept after the first",
    "",
    "event: endpoint",
    'data: {"jsonrpc":"2.0","id":1,"result":{"text":"héllo ☃"}}',
    "id: 2",
    "",
    'data: {"jsonrpc":"2.0","id":2,"res',  # cut mid-event: the tail
]


def _stream(eol: str) -> bytes:
    return eol.join(_LINES).encode()


EOLS = [pytest.param("\n", id="LF"), pytest.param("\r\n", id="CRLF"), pytest.param("\r", id="CR")]


def _expected(eol: str) -> tuple[list[SseEvent], bytes]:
    e = eol.encode()

    def raw(*lines: str) -> bytes:
        return e.join(x.encode() for x in lines) + e + e

    events = [
        SseEvent(data="", id="0", raw=raw("id: 0", "data:")),
        SseEvent(
            data='{"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}',
            event="message",
            id="1",
            raw=raw(*_LINES[5:8]),
        ),
        SseEvent(
            data="line one\nline two\n leading space kept after the first",
            raw=raw(*_LINES[9:13]),
        ),
        SseEvent(
            data='{"jsonrpc":"2.0","id":1,"result":{"text":"héllo ☃"}}',
            event="endpoint",
            id="2",
            raw=raw(*_LINES[14:17]),
        ),
    ]
    return events, _LINES[-1].encode()


def _parse(chunks: list[bytes]) -> tuple[list[SseEvent], bytes]:
    parser = SseParser()
    events: list[SseEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    last, tail = parser.finish()
    return events + last, tail


@pytest.mark.parametrize("eol", EOLS)
def test_one_shot_parse(eol: str) -> None:
    assert _parse([_stream(eol)]) == _expected(eol)


@pytest.mark.parametrize("eol", EOLS)
def test_split_at_every_byte_boundary(eol: str) -> None:
    stream = _stream(eol)
    expected = _expected(eol)

    for i in range(len(stream) + 1):
        assert _parse([stream[:i], stream[i:]]) == expected, f"split at byte {i}"


@pytest.mark.parametrize("eol", EOLS)
def test_byte_by_byte(eol: str) -> None:
    stream = _stream(eol)

    assert _parse([stream[i : i + 1] for i in range(len(stream))]) == _expected(eol)


@pytest.mark.parametrize("eol", EOLS)
def test_random_chunkings(eol: str) -> None:
    stream = _stream(eol)
    expected = _expected(eol)
    rng = random.Random(20250611)

    for attempt in range(300):
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randint(1, 25)))
        chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        chunks.insert(rng.randint(0, len(chunks)), b"")  # empty chunks happen too (end_of_stream)
        assert _parse(chunks) == expected, f"attempt {attempt}: cuts {cuts}"


def test_events_are_returned_by_the_chunk_that_completes_them() -> None:
    parser = SseParser()

    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\ndata: b\n\nda") == [
        SseEvent(data="a", raw=b"data: a\n\n"),
        SseEvent(data="b", raw=b"data: b\n\n"),
    ]
    assert parser.feed(b"ta: c") == []
    assert parser.finish() == ([], b"data: c")


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b": keepalive\n\n", id="comment"),
        pytest.param(b":\n\n:ping\r\n\r\n", id="empty-comments"),
        pytest.param(b"unknown: x\n\n", id="unknown-field"),
        pytest.param(b"\n\n\n\n", id="blank-lines"),
    ],
)
def test_blocks_without_event_fields_dispatch_nothing(stream: bytes) -> None:
    parser = SseParser()

    assert parser.feed(stream) == []
    assert parser.finish() == ([], b"")


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        pytest.param(b"data: x\n\n", SseEvent(data="x"), id="defaults"),
        pytest.param(b"event: ping\ndata: x\n\n", SseEvent(data="x", event="ping"), id="event-name"),
        pytest.param(b"event:\ndata: x\n\n", SseEvent(data="x"), id="empty-event-name-is-message"),
        pytest.param(b"id: abc-1\ndata: x\n\n", SseEvent(data="x", id="abc-1"), id="id"),
        pytest.param(b"id\ndata: x\n\n", SseEvent(data="x", id=""), id="id-without-value"),
        pytest.param(b"data\n\n", SseEvent(data=""), id="data-without-colon"),
        pytest.param(b"data: a\ndata:\ndata: b\n\n", SseEvent(data="a\n\nb"), id="empty-data-line-in-the-middle"),
        pytest.param(b"data: x: y\n\n", SseEvent(data="x: y"), id="colon-in-value"),
        pytest.param(b"data: \xff\n\n", SseEvent(data="\ufffd"), id="invalid-utf8-replaced"),
    ],
)
def test_fields(block: bytes, expected: SseEvent) -> None:
    (event,) = SseParser().feed(block)

    assert (event.data, event.event, event.id) == (expected.data, expected.event, expected.id)
    assert event.raw == block


def test_finish_returns_truncated_tail_and_resets() -> None:
    parser = SseParser()
    parser.feed(b"data: complete\n\ndata: partial\n")

    assert parser.finish() == ([], b"data: partial\n")
    assert parser.finish() == ([], b"")
    assert parser.feed(b"data: next\n\n") == [SseEvent(data="next", raw=b"data: next\n\n")]


def test_finish_after_clean_end_is_empty() -> None:
    parser = SseParser()

    assert len(parser.feed(b"data: a\r\n\r\ndata: b\r\n\r\n")) == 2
    assert parser.finish() == ([], b"")


@pytest.mark.parametrize(
    "blank", [b"\n\r\n", b"\r\n\n", b"\r\r\n", b"\n\r"], ids=["lf-crlf", "crlf-lf", "cr-crlf", "lf-cr"]
)
def test_mixed_line_endings_still_end_an_event(blank: bytes) -> None:
    parser = SseParser()
    events = parser.feed(b"data: one" + blank + b"data: two\n\n")
    assert [e.data for e in events] == ["one", "two"]


# --- the WHATWG event-stream parsing rules, case by case --------------------------------------------------------
# Each case: the stream and what a conforming client sees: (event type, data, id field, retry) per dispatched
# event, and ("-", id, retry) for blocks that change only the last event id or the reconnection time.


def _seen(stream: bytes, chunks: list[bytes] | None = None) -> list[tuple]:
    parser = SseParser()
    events: list[SseEvent] = []
    for chunk in chunks or [stream]:
        events += parser.feed(chunk)
    last, _ = parser.finish()
    out: list[tuple] = []
    for e in events + last:
        if e.dispatched:
            out.append((e.event, e.data, e.id, e.retry))
        elif e.id is not None or e.retry is not None:
            out.append(("-", e.id, e.retry))
    return out


WHATWG = [
    pytest.param(b"\xef\xbb\xbfdata: a\n\n", [("message", "a", None, None)], id="bom-dropped"),
    pytest.param(b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\n", [], id="only-one-bom-dropped"),
    pytest.param(b"data: a\n\n\xef\xbb\xbfdata: b\n\n", [("message", "a", None, None)], id="bom-later-is-a-name"),
    pytest.param(b"data: a\rdata: b\r\r", [("message", "a\nb", None, None)], id="bare-cr"),
    pytest.param(b"data: a\r\ndata: b\r\n\r\n", [("message", "a\nb", None, None)], id="crlf"),
    pytest.param(b"data: a\ndata: b\n\n", [("message", "a\nb", None, None)], id="lf"),
    pytest.param(b"data: a\rdata: b\r\ndata: c\n\r\n", [("message", "a\nb\nc", None, None)], id="mixed"),
    pytest.param(b"data: a\r\r", [("message", "a", None, None)], id="bare-cr-at-end-of-stream"),
    pytest.param(b"data: a\n\ndata: b\n", [("message", "a", None, None)], id="last-event-without-blank-line"),
    pytest.param(b"data: a\n\ndata: b", [("message", "a", None, None)], id="last-line-unterminated"),
    pytest.param(b"event: x\n\n", [], id="event-without-data-not-dispatched"),
    pytest.param(b"event: x\n\ndata: y\n\n", [("message", "y", None, None)], id="event-type-reset-after-block"),
    pytest.param(b"event: x\ndata: y\n\n", [("x", "y", None, None)], id="named-event"),
    pytest.param(b": hi\ndata: a\n: there\n\n", [("message", "a", None, None)], id="comments"),
    pytest.param(b":\n\n", [], id="empty-comment"),
    pytest.param(b"retry: 5000\ndata: a\n\n", [("message", "a", None, 5000)], id="retry"),
    pytest.param(b"retry: 5000\n\n", [("-", None, 5000)], id="retry-alone"),
    pytest.param(b"retry: 5x\n\nretry: -1\n\nretry:\n\n", [], id="retry-not-digits-ignored"),
    pytest.param(b"id: 7\ndata: a\n\n", [("message", "a", "7", None)], id="id"),
    pytest.param(b"id: 7\n\n", [("-", "7", None)], id="id-alone-sets-last-id"),
    pytest.param(b"id\n\n", [("-", "", None)], id="empty-id-resets"),
    pytest.param(b"id: a\x00b\ndata: x\n\n", [("message", "x", None, None)], id="id-with-nul-ignored"),
    pytest.param(b"data\n\n", [("message", "", None, None)], id="data-without-colon"),
    pytest.param(b"data:a\n\n", [("message", "a", None, None)], id="no-space-after-colon"),
    pytest.param(b"data:  a\n\n", [("message", " a", None, None)], id="only-one-space-dropped"),
    pytest.param(b"data : a\n\nDATA: b\n\n", [], id="field-names-are-exact"),
    pytest.param(b"\n\n\ndata: a\n\n\n\n", [("message", "a", None, None)], id="extra-blank-lines"),
    pytest.param(b"data: a\ndata:\n\n", [("message", "a\n", None, None)], id="trailing-empty-data-line"),
]


@pytest.mark.parametrize(("stream", "expected"), WHATWG)
def test_whatwg_parsing_rules(stream: bytes, expected: list[tuple]) -> None:
    assert _seen(stream) == expected
    assert _seen(stream, [stream[i : i + 1] for i in range(len(stream))]) == expected  # however it is cut


@pytest.mark.parametrize(
    ("data", "event", "event_id", "retry"),
    [
        ("plain", None, None, None),
        ('{"jsonrpc":"2.0","id":1,"result":{}}', "message", "3", None),
        ("two\nlines", "custom", "", 10),
        ("cr\rand crlf\r\nsplit", None, "x", None),
        ("", None, "prime-1", None),
        ("trailing\n", None, None, None),
    ],
)
def test_format_event_parses_back_to_the_same_fields(
    data: str, event: str | None, event_id: str | None, retry: int | None
) -> None:
    raw = format_event(data, event, event_id, retry)
    (parsed,) = SseParser().feed(raw)

    assert parsed.data == data.replace("\r\n", "\n").replace("\r", "\n")
    assert (parsed.event, parsed.id, parsed.retry, parsed.dispatched) == (event or "message", event_id, retry, True)
    assert parsed.raw == raw


def test_format_event_without_data_is_not_dispatched() -> None:
    (parsed,) = SseParser().feed(format_event(None, id="9", retry=100))

    assert (parsed.dispatched, parsed.id, parsed.retry) == (False, "9", 100)


@pytest.mark.parametrize(("event", "event_id"), [("a\nb", None), (None, "1\r2"), (None, "1\x002")])
def test_format_event_refuses_fields_a_line_end_would_split(event: str | None, event_id: str | None) -> None:
    with pytest.raises(ValueError):
        format_event("x", event, event_id)


_BLOCK_PIECES = [b"data", b"event", b"id", b"retry", b":", b" ", b"  ", b"\n"]
_BLOCK_PIECES += [b"x", b"12", b"\x00", b"\xc3\xa9", b"\xff"]  # a NUL (ids refuse it), UTF-8, a bad byte


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.sampled_from(_BLOCK_PIECES), max_size=30))
def test_lf_blocks_parse_as_their_crlf_twins(pieces: list[bytes]) -> None:
    # Without a CR the lines are found by bytes.find and values are views; with CRLF, by splitlines: same fields.
    block = b"".join(pieces)
    assert parse_event(block, b"raw") == parse_event(block.replace(b"\n", b"\r\n"), b"raw")
