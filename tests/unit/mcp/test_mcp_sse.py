"""SSE framing: the same events come out however the stream is cut into chunks."""

from __future__ import annotations

import random

import pytest

from extproc.mcp.sse import SseEvent, SseParser

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
    return events, parser.finish()


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
    assert parser.finish() == b"data: c"


@pytest.mark.parametrize(
    "stream",
    [
        pytest.param(b": keepalive\n\n", id="comment"),
        pytest.param(b":\n\n:ping\r\n\r\n", id="empty-comments"),
        pytest.param(b"retry: 1000\n\n", id="retry-only"),
        pytest.param(b"unknown: x\n\n", id="unknown-field"),
        pytest.param(b"\n\n\n\n", id="blank-lines"),
    ],
)
def test_blocks_without_event_fields_dispatch_nothing(stream: bytes) -> None:
    parser = SseParser()

    assert parser.feed(stream) == []
    assert parser.finish() == b""


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

    assert parser.finish() == b"data: partial\n"
    assert parser.finish() == b""
    assert parser.feed(b"data: next\n\n") == [SseEvent(data="next", raw=b"data: next\n\n")]


def test_finish_after_clean_end_is_empty() -> None:
    parser = SseParser()

    assert len(parser.feed(b"data: a\r\n\r\ndata: b\r\n\r\n")) == 2
    assert parser.finish() == b""


@pytest.mark.parametrize(
    "blank", [b"\n\r\n", b"\r\n\n", b"\r\r\n", b"\n\r"], ids=["lf-crlf", "crlf-lf", "cr-crlf", "lf-cr"]
)
def test_mixed_line_endings_still_end_an_event(blank: bytes) -> None:
    parser = SseParser()
    events = parser.feed(b"data: one" + blank + b"data: two\n\n")
    assert [e.data for e in events] == ["one", "two"]
