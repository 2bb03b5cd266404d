"""Reading recordings back: tamper evidence per stream, merge across writers, request/response pairing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from extproc.recording.chain import Problem, chain_line
from extproc.recording.manifest import GENESIS
from extproc.recording.replay import Session, load_session, pair_messages, verify_stream
from extproc.recording.store.file import FileStore


def _stream(n: int = 5) -> bytes:
    """A stream of ``n`` chained lines exactly as the recorder writes them."""
    out, prev = [], GENESIS
    for i in range(n):
        line = chain_line(i, prev, {"type": "mcp.request", "session": "s", "time": float(i), "text": f"event-{i}"})
        prev = hashlib.sha256(line).hexdigest()
        out.append(line + b"\n")
    return b"".join(out)


def test_intact_stream_verifies() -> None:
    events, problems = verify_stream("w", _stream())

    assert problems == []
    assert [e["text"] for e in events] == [f"event-{i}" for i in range(5)]


def test_empty_stream_verifies() -> None:
    assert verify_stream("w", b"") == ([], [])


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]


def _join(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\n" for line in lines)


def _change_byte(data: bytes) -> bytes:
    lines = _lines(data)
    lines[1] = lines[1].replace(b"event-1", b"event-X")  # still valid JSON: only the chain can tell
    return _join(lines)


def _break_json(data: bytes) -> bytes:
    lines = _lines(data)
    lines[2] = lines[2].replace(b'"text"', b'"text" ', 1).replace(b"}", b"]", 1)
    return _join(lines)


def _delete_line(data: bytes) -> bytes:
    lines = _lines(data)
    del lines[2]
    return _join(lines)


def _swap_lines(data: bytes) -> bytes:
    lines = _lines(data)
    lines[1], lines[2] = lines[2], lines[1]
    return _join(lines)


def _truncate_last(data: bytes) -> bytes:
    return data[:-10]


def _drop_final_newline(data: bytes) -> bytes:
    return data[:-1]


def _non_object_line(data: bytes) -> bytes:
    lines = _lines(data)
    lines[3] = b"[1, 2, 3]"
    return _join(lines)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        pytest.param(_change_byte, [(3, "hash chain broken")], id="one-byte-changed"),
        pytest.param(_break_json, [(3, "not valid JSON"), (4, "hash chain broken")], id="line-made-invalid-json"),
        pytest.param(
            _delete_line,
            [(3, "sequence 3, expected 2"), (3, "hash chain broken"), (4, "sequence 4, expected 3")],
            id="line-deleted",
        ),
        pytest.param(
            _swap_lines,
            [
                (2, "sequence 2, expected 1"),
                (2, "hash chain broken"),
                (3, "sequence 1, expected 2"),
                (3, "hash chain broken"),
                (4, "hash chain broken"),
            ],
            id="two-lines-swapped",
        ),
        pytest.param(
            _truncate_last, [(5, "last line is not terminated"), (5, "not valid JSON")], id="truncated-last-line"
        ),
        pytest.param(_drop_final_newline, [(5, "last line is not terminated")], id="missing-final-newline"),
        pytest.param(_non_object_line, [(4, "not valid JSON"), (5, "hash chain broken")], id="line-replaced-by-array"),
    ],
)
def test_tampering_is_detected(tamper: Callable[[bytes], bytes], expected: list[tuple[int, str]]) -> None:
    _, problems = verify_stream("w1", tamper(_stream()))

    assert [(p.line, p.message[: len(msg)]) for p, (_, msg) in zip(problems, expected, strict=False)] == expected
    assert len(problems) == len(expected), problems
    assert all(p.writer == "w1" for p in problems)


def test_problem_reads_as_writer_line_message() -> None:
    assert str(Problem("w1", 3, "hash chain broken")) == "w1: line 3: hash chain broken"


async def test_load_session_merges_writers_and_reports_problems_per_writer(tmp_path: Path) -> None:
    for writer, data in (("w-a", _stream(2)), ("w-b", _swap_lines(_stream(3)))):
        (tmp_path / "sess").mkdir(exist_ok=True)
        (tmp_path / "sess" / f"{writer}.jsonl").write_bytes(data)
    store = FileStore(tmp_path)

    session = load_session(store, "sess")

    assert session.id == "s"  # the session id recorded in the events, not the file key
    assert sorted(session.writers) == ["w-a", "w-b"]
    assert {p.writer for p in session.problems if p.segment is None and p.line > 1} == {"w-b"}  # chain problems
    assert all("unsigned data" in p.message for p in session.problems if p.writer == "w-a")  # no manifests
    assert [(e["time"], e["_writer"]) for e in session.events] == [
        (0.0, "w-a"),
        (0.0, "w-b"),
        (1.0, "w-a"),
        (1.0, "w-b"),
        (2.0, "w-b"),
    ]


def test_load_session_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        load_session(FileStore(tmp_path), "nope")


def _ev(kind: str, exchange: str, t: float, *messages: dict[str, Any]) -> dict[str, Any]:
    return {"type": kind, "exchange": exchange, "time": t, "messages": list(messages)}


def _req(i: Any, method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": i, "method": method, "params": params}


def _res(i: Any, **result: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": i, "result": result}


def _note(method: str, **params: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": method, "params": params}


def _summary(calls: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (
            c["from"],
            c["request"].get("method"),
            c["request"].get("id"),
            c["response"] and c["response"].get("result"),
            c["response_time"],
            [n["message"]["params"].get("progress") for n in c["notifications"]],
        )
        for c in calls
    ]


def test_pair_messages_by_id_in_request_order() -> None:
    session = Session(
        id="s",
        events=[
            _ev("mcp.request", "e1", 1.0, _req(1, "initialize")),
            _ev("mcp.response", "e1", 1.1, _res(1, ok=1)),
            _ev("mcp.request", "e2", 2.0, _req("a", "tools/call", name="slow")),
            _ev("mcp.request", "e3", 2.5, _req(2, "tools/list")),
            _ev("http.response", "e3", 2.6),  # not a message event: ignored
            _ev("mcp.response", "e3", 2.7, _res(2, tools=[])),
            _ev("mcp.response", "e2", 3.0, _res("a", done=True)),
            _ev("mcp.response", "e4", 4.0, _res(99, orphan=True)),  # a response nobody asked for is dropped
        ],
    )

    assert _summary(pair_messages(session)) == [
        ("client", "initialize", 1, {"ok": 1}, 1.1, []),
        ("client", "tools/call", "a", {"done": True}, 3.0, []),
        ("client", "tools/list", 2, {"tools": []}, 2.7, []),
    ]


def test_pair_messages_ids_of_different_types_do_not_collide() -> None:
    session = Session(
        id="s",
        events=[
            _ev("mcp.request", "e1", 1.0, _req(1, "a")),
            _ev("mcp.request", "e2", 1.0, _req("1", "b")),
            _ev("mcp.response", "e2", 2.0, _res("1", which="b")),
            _ev("mcp.response", "e1", 3.0, _res(1, which="a")),
        ],
    )

    assert [(c["request"]["method"], c["response"]["result"]) for c in pair_messages(session)] == [
        ("a", {"which": "a"}),
        ("b", {"which": "b"}),
    ]


def test_progress_attaches_to_the_open_request_of_the_same_exchange() -> None:
    session = Session(
        id="s",
        events=[
            _ev("mcp.request", "e1", 1.0, _req(1, "tools/call", name="count_slowly")),
            _ev("mcp.request", "e2", 1.5, _req(2, "tools/list")),
            _ev("mcp.response", "e1", 2.0, _note("notifications/progress", progress=1)),
            _ev("mcp.response", "e2", 2.1, _res(2)),
            _ev("mcp.response", "e1", 2.2, _note("notifications/progress", progress=2)),
            _ev("mcp.response", "e1", 3.0, _res(1, done=True)),
            # After the request is answered, a notification on that exchange stands alone.
            _ev("mcp.response", "e1", 4.0, _note("notifications/progress", progress=3)),
            # A notification on a standalone GET stream has no open request: it stands alone.
            _ev("mcp.response", "get", 5.0, _note("notifications/tools/list_changed")),
        ],
    )

    assert _summary(pair_messages(session)) == [
        ("client", "tools/call", 1, {"done": True}, 3.0, [1, 2]),
        ("client", "tools/list", 2, {}, 2.1, []),
        ("server", "notifications/progress", None, None, None, []),
        ("server", "notifications/tools/list_changed", None, None, None, []),
    ]


def test_batch_request_and_batch_response() -> None:
    session = Session(
        id="s",
        events=[
            _ev(
                "mcp.request",
                "e1",
                1.0,
                _req(1, "tools/list"),
                _note("notifications/initialized"),
                _req(2, "prompts/list"),
            ),
            _ev("mcp.response", "e1", 2.0, _res(2, prompts=[]), _res(1, tools=[])),
        ],
    )

    assert _summary(pair_messages(session)) == [
        ("client", "tools/list", 1, {"tools": []}, 2.0, []),
        ("client", "notifications/initialized", None, None, None, []),
        ("client", "prompts/list", 2, {"prompts": []}, 2.0, []),
    ]


def test_server_initiated_request_is_answered_by_the_client() -> None:
    session = Session(
        id="s",
        events=[
            _ev("mcp.request", "e1", 1.0, _req(1, "tools/call", name="ask")),
            _ev("mcp.response", "e1", 1.5, _req(1, "sampling/createMessage")),  # same id, other direction
            _ev("mcp.request", "e2", 2.0, _res(1, model="m")),
            _ev("mcp.response", "e1", 3.0, _res(1, answer=42)),
        ],
    )

    assert _summary(pair_messages(session)) == [
        ("client", "tools/call", 1, {"answer": 42}, 3.0, []),
        ("server", "sampling/createMessage", 1, {"model": "m"}, 2.0, []),
    ]


def test_pair_messages_of_a_recorded_line_stream() -> None:
    """The pairing works on what verify_stream returns, not just hand-built dicts."""
    lines, prev = [], GENESIS
    for i, ev in enumerate([_ev("mcp.request", "e", 1.0, _req(5, "ping")), _ev("mcp.response", "e", 2.0, _res(5))]):
        line = chain_line(i, prev, ev)
        prev = hashlib.sha256(line).hexdigest()
        lines.append(line + b"\n")
    events, problems = verify_stream("w", b"".join(lines))

    assert problems == []
    assert _summary(pair_messages(Session(id="s", events=events))) == [("client", "ping", 5, {}, 2.0, [])]
    assert json.loads(lines[0])["messages"][0]["method"] == "ping"
