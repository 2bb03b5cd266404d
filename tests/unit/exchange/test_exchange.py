"""Exchange phases driven with real ext_proc protobufs, a real Gateway and a real recorder writing files."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from google.protobuf import struct_pb2

from extproc.errors import StoreError
from extproc.exchange import Exchange
from extproc.gateway import Gateway
from extproc.recording.events import McpRequest, body_bytes
from extproc.recording.recorder import Recorder
from extproc.recording.replay import load_session
from extproc.recording.spool import Spool
from extproc.recording.store.file import FileStore
from extproc.recording.writer import RecorderOptions
from extproc.reserved import parse_server_unit
from extproc.settings import parse

TOKEN = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0LXBheWxvYWQ.sig-7f3a9b"
COOKIE = "sid=cookie-secret-41d2"
API_KEY = "key-secret-8c1e"

INIT = {"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}
INIT_RESULT = {"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": "2025-06-18", "serverInfo": {"name": "w"}}}
CALL = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "count_slowly", "arguments": {"n": 2}}}


class Clock:
    """Time stands still until the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    gw: Gateway
    store: FileStore
    recorder: Recorder
    clock: Clock
    root: Path

    def exchange(self) -> Exchange:
        return Exchange(self.gw)

    async def recorded(self) -> dict[str, list[dict[str, Any]]]:
        """Close the recorder and read every session back, verified."""
        await self.recorder.close()
        await self.store.close()
        out = {}
        for key in self.store.list_sessions():
            session = load_session(self.store, key)
            assert session.problems == []
            # A server's session is recorded under u_<server>_<backend>_<id>: keyed here by the server's id.
            unit = parse_server_unit(session.id)
            assert unit is None or unit[:2] == ("weather", ""), session.id
            out[unit[2] if unit else session.id] = session.events
        return out

    def written_bytes(self) -> bytes:
        return b"".join(p.read_bytes() for p in sorted(self.root.rglob("*")) if p.is_file())


def _settings(required: bool = True) -> Any:
    return parse(
        {
            "servers": [{"name": "weather", "upstream": "127.0.0.1:8000"}],
            "recording": {"required": required, "max_event_body_bytes": 1024},
            "allow_anonymous": True,
        }
    )


def _gateway(recorder: Recorder, clock: Clock, required: bool = True) -> Gateway:
    gw = Gateway.build(_settings(required), recorder)
    ids = iter(f"ex{i}" for i in range(1, 100))
    gw.clock = clock
    gw.new_id = lambda: next(ids)
    return gw


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    root = tmp_path / "rec"
    store = FileStore(root)
    recorder = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=0.01))
    await recorder.start()
    clock = Clock()
    yield Rig(_gateway(recorder, clock), store, recorder, clock, root)
    await recorder.close()
    await store.close()


def headers(values: dict[str, str], end: bool = False) -> ep.HttpHeaders:
    return ep.HttpHeaders(
        headers=base_pb2.HeaderMap(
            headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in values.items()]
        ),
        end_of_stream=end,
    )


def body(data: bytes, end: bool = True) -> ep.HttpBody:
    return ep.HttpBody(body=data, end_of_stream=end)


def request_headers(path: str = "/weather/mcp", session: str | None = None, **extra: str) -> ep.HttpHeaders:
    h = {
        ":method": "POST",
        ":path": path,
        ":authority": "gw.local",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "authorization": f"Bearer {TOKEN}",
    }
    if session:
        h["mcp-session-id"] = session
    h.update(extra)
    return headers(h)


def response_headers(content_type: str, session: str | None = None, **extra: str) -> ep.HttpHeaders:
    h = {":status": "200", "content-type": content_type}
    if session:
        h["mcp-session-id"] = session
    h.update(extra)
    return headers(h)


def _sse(*messages: dict[str, Any]) -> bytes:
    return b"".join(f"id: {i}\nevent: message\ndata: {json.dumps(m)}\n\n".encode() for i, m in enumerate(messages))


def _progress(n: int) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": n}}


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def _immediate(resp: ep.ProcessingResponse) -> tuple[int, dict[str, Any], dict[str, str]]:
    assert resp.WhichOneof("response") == "immediate_response"
    imm = resp.immediate_response
    hdrs = {o.header.key: o.header.raw_value.decode() for o in imm.headers.set_headers}
    return imm.status.code, json.loads(imm.body), hdrs


async def test_initialize_is_recorded_under_the_session_the_server_names(rig: Rig) -> None:
    ex = rig.exchange()
    init = json.dumps(INIT).encode()
    result = json.dumps(INIT_RESULT).encode()

    rig.clock.now = 1000.1
    r1 = await ex.on_request_headers(request_headers())
    rig.clock.now = 1000.2
    r2 = await ex.on_request_body(body(init))
    rig.clock.now = 1000.5
    r3 = await ex.on_response_headers(response_headers("application/json", session="sess-abc"))
    rig.clock.now = 1000.75
    r4 = await ex.on_response_body(body(result))

    assert [r.WhichOneof("response") for r in (r1, r2, r3, r4)] == [
        "request_headers",
        "request_body",
        "response_headers",
        "response_body",
    ]
    assert ex.finished
    recorded = await rig.recorded()
    assert list(recorded) == ["sess-abc"]
    events = recorded["sess-abc"]
    assert _types(events) == ["exchange.start", "mcp.request", "http.response", "mcp.response", "exchange.end"]
    assert {(e["session"], e["exchange"]) for e in events} == {("u_weather__sess-abc", "ex1")}  # server and backend
    assert [e["index"] for e in events] == [0, 1, 2, 3, 4]
    # Events held until the session was known keep the time they happened, not the time they were written.
    assert [e["time"] for e in events] == [1000.1, 1000.2, 1000.5, 1000.75, 1000.75]
    start, req, resp, res, end = events
    assert (start["server"], start["method"], start["path"]) == ("weather", "POST", "/weather/mcp")
    assert req["messages"] == [INIT] and req["error"] is None and req["size"] == len(init)
    assert resp["status"] == 200 and resp["headers"]["mcp-session-id"] == "sess-abc"
    assert res["messages"] == [INIT_RESULT] and res["body"] == {"raw": result.decode()}
    assert (end["outcome"], end["status"], end["bytes_in"], end["bytes_out"]) == (
        "complete",
        200,
        len(init),
        len(result),
    )
    assert end["duration_ms"] == pytest.approx(750.0)


async def test_request_with_session_header_is_recorded_under_it(rig: Rig) -> None:
    ex = rig.exchange()

    await ex.on_request_headers(request_headers(session="sess-1"))
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(response_headers("application/json"))  # servers need not repeat it
    await ex.on_response_body(body(b'{"jsonrpc":"2.0","id":7,"result":{}}'))

    recorded = await rig.recorded()
    assert list(recorded) == ["sess-1"]
    assert _types(recorded["sess-1"])[-1] == "exchange.end"


@pytest.mark.parametrize("named", ["x-ex2", "u_other__s1", "mcp-extproc-retention"])
async def test_a_session_id_naming_a_gateway_unit_stays_inside_its_servers_unit(rig: Rig, named: str) -> None:
    """A client-sent session id (anonymous: not bound) is recorded under its server's unit whatever it names: the
    synthetic unit of another exchange, another server's unit, the gateway's own sessions."""
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session=named))
    ex.finish("reset")
    await rig.recorded()
    assert rig.store.list_sessions() == [f"u_weather__{named}"]


def _chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, i, k = [], 0, 0
    while i < len(data):
        n = sizes[k % len(sizes)]
        out.append(data[i : i + n])
        i, k = i + n, k + 1
    return out


async def test_sse_response_in_odd_chunks_gives_one_mcp_response_per_event(rig: Rig) -> None:
    result = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "counted to 2"}]}}
    stream = b": keepalive\n\n" + _sse(_progress(1), _progress(2), result)
    chunks = _chunks(stream, [1, 7, 3, 29, 2, 13, 64])
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="sess-1"))
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(response_headers("text/event-stream"))

    for n, chunk in enumerate(chunks):
        rig.clock.now = 2000 + n  # the time says which chunk an event was recorded at
        resp = await ex.on_response_body(body(chunk, end=False))
        assert resp.WhichOneof("response") == "response_body"
    rig.clock.now = 3000
    await ex.on_response_body(body(b"", end=True))

    events = (await rig.recorded())["sess-1"]
    assert _types(events) == [
        "exchange.start",
        "mcp.request",
        "http.response",
        "mcp.response",
        "mcp.response",
        "mcp.response",
        "exchange.end",
    ]
    responses = events[3:6]
    assert [r["messages"] for r in responses] == [[_progress(1)], [_progress(2)], [result]]
    assert [(r["sse_event"], r["sse_id"], r["error"]) for r in responses] == [
        ("message", "0", None),
        ("message", "1", None),
        ("message", "2", None),
    ]
    # Each event is recorded as soon as the chunk completing it arrives, not at the end of the stream.
    ends = [stream.index(b"\n\n", stream.index(f"id: {i}\n".encode())) + 2 for i in range(3)]
    offsets = [sum(len(c) for c in chunks[: n + 1]) for n in range(len(chunks))]
    assert [r["time"] for r in responses] == [2000 + next(n for n, o in enumerate(offsets) if o >= e) for e in ends]
    assert events[-1]["outcome"] == "complete"
    assert events[-1]["bytes_out"] == len(stream)


async def test_sse_with_bare_cr_line_ends_records_the_last_event_as_a_message(rig: Rig) -> None:
    result = {"jsonrpc": "2.0", "id": 7, "result": {"content": []}}
    stream = _sse(_progress(1), result).replace(b"\n", b"\r")  # the last event ends "\r\r": complete at EOF
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="sess-1"))
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(response_headers("text/event-stream"))

    await ex.on_response_body(body(stream, end=True))

    events = (await rig.recorded())["sess-1"]
    assert _types(events)[3:] == ["mcp.response", "mcp.response", "exchange.end"]  # no http.chunk tail
    assert events[4]["messages"] == [result]


async def test_sse_event_that_is_not_json_rpc_keeps_its_raw_bytes(rig: Rig) -> None:
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="s"))
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(response_headers("text/event-stream"))

    await ex.on_response_body(body(b"event: weird\ndata: not json\n\n", end=True))

    (ev,) = [e for e in (await rig.recorded())["s"] if e["type"] == "mcp.response"]
    assert ev["messages"] == []
    assert ev["error"].startswith("not JSON")
    assert ev["sse_event"] == "weird"
    assert ev["body"] == {"raw": "event: weird\ndata: not json\n\n"}


async def test_json_response_is_recorded_once_at_its_end(rig: Rig) -> None:
    result = {"jsonrpc": "2.0", "id": 7, "result": {"text": "x" * 300}}
    raw = json.dumps(result).encode()
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="s"))
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(response_headers("application/json"))

    for n, chunk in enumerate(_chunks(raw, [5, 50, 17])):
        rig.clock.now = 2000 + n
        await ex.on_response_body(body(chunk, end=False))
    rig.clock.now = 3000
    await ex.on_response_body(body(b"", end=True))

    events = (await rig.recorded())["s"]
    (res,) = [e for e in events if e["type"] == "mcp.response"]
    assert res["messages"] == [result]
    assert res["time"] == 3000
    assert body_bytes(res["body"]) == raw
    assert not [e for e in events if e["type"] == "http.chunk"]


async def test_json_response_over_the_event_limit_is_recorded_in_chunks(rig: Rig) -> None:
    raw = json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"text": "y" * 3000}}).encode()  # limit is 1024
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="s"))
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(response_headers("application/json"))

    parts = _chunks(raw, [700])
    for i, chunk in enumerate(parts):
        await ex.on_response_body(body(chunk, end=i == len(parts) - 1))

    events = (await rig.recorded())["s"]
    chunks = [e for e in events if e["type"] == "http.chunk"]
    assert b"".join(body_bytes(c["body"]) for c in chunks) == raw  # nothing lost, nothing doubled
    assert not [e for e in events if e["type"] == "mcp.response"]
    assert events[-1]["bytes_out"] == len(raw)


async def test_other_response_bodies_are_recorded_chunk_by_chunk(rig: Rig) -> None:
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="s"))
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(response_headers("application/octet-stream"))

    await ex.on_response_body(body(b"\x00\xffbinary", end=False))
    await ex.on_response_body(body(b"tail", end=True))

    chunks = [e for e in (await rig.recorded())["s"] if e["type"] == "http.chunk"]
    assert [body_bytes(c["body"]) for c in chunks] == [b"\x00\xffbinary", b"tail"]
    assert "raw_b64" in chunks[0]["body"]


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/", id="root"),
        pytest.param("/other/mcp", id="unknown-server"),
        pytest.param("/weather/mcpx", id="prefix-lookalike"),
        pytest.param("/weather", id="no-mcp-suffix"),
        pytest.param("/weather/sse", id="other-suffix"),
        pytest.param("/../weather/mcp", id="traversal"),
        pytest.param("/weather/mcp/", id="trailing-slash"),
        pytest.param("/weather/mcp/x", id="below-the-mcp-path"),
    ],
)
async def test_unknown_path_is_refused_with_404_and_nothing_recorded(rig: Rig, path: str) -> None:
    ex = rig.exchange()

    resp = await ex.on_request_headers(request_headers(path=path))

    status, doc, hdrs = _immediate(resp)
    assert status == 404
    assert doc == {"jsonrpc": "2.0", "id": None, "error": {"code": -32601, "message": "no MCP server at this path"}}
    assert hdrs["content-type"] == "application/json"
    assert ex.finished
    ex.finish("reset")  # the stream loop always calls finish; it must not record a refused exchange
    assert await rig.recorded() == {}
    assert rig.recorder.written_events == 0
    assert rig.written_bytes() == b""


@pytest.mark.parametrize(
    ("raw", "error_start", "body_field"),
    [
        pytest.param(b"hello, not json", "not JSON", {"raw": "hello, not json"}, id="text"),
        pytest.param(b"\xff\xfe\x00garbage", "not JSON", {"raw_b64": "//4AZ2FyYmFnZQ=="}, id="binary"),
        pytest.param(b'{"id":1,"method":"x"}', "not a JSON-RPC", {"raw": '{"id":1,"method":"x"}'}, id="not-jsonrpc"),
        pytest.param(b"[]", "empty batch", {"raw": "[]"}, id="empty-batch"),
    ],
)
async def test_unparseable_request_body_is_kept_raw_with_error(
    rig: Rig, raw: bytes, error_start: str, body_field: dict[str, str]
) -> None:
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="sess-1"))

    resp = await ex.on_request_body(body(raw))

    status, doc, _ = _immediate(resp)  # what cannot be parsed cannot be authorized: refused
    assert status == 400
    assert doc["error"]["code"] == -32700
    events = (await rig.recorded())["sess-1"]
    assert _types(events) == ["exchange.start", "mcp.request", "exchange.end"]
    req = events[1]
    assert req["messages"] == []
    assert req["error"].startswith(error_start)
    assert req["body"] == body_field
    assert body_bytes(req["body"]) == raw
    assert req["size"] == len(raw)
    assert (events[2]["outcome"], events[2]["status"]) == ("denied", 400)


async def test_credentials_never_reach_the_recording(rig: Rig) -> None:
    ex = rig.exchange()
    await ex.on_request_headers(
        request_headers(
            session="sess-1",
            cookie=COOKIE,
            **{"x-api-key": API_KEY, "proxy-authorization": f"Basic {API_KEY}", "x-upstream-token": TOKEN},
        )
    )
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(
        response_headers("text/event-stream", **{"set-cookie": COOKIE, "x-refresh-token": TOKEN})
    )
    await ex.on_response_body(body(_sse({"jsonrpc": "2.0", "id": 7, "result": {}}), end=True))

    events = (await rig.recorded())["sess-1"]
    written = rig.written_bytes()
    assert written  # the exchange was recorded...
    for secret in (TOKEN, COOKIE, API_KEY, TOKEN.split(".")[1], "cookie-secret", "key-secret"):
        assert secret.encode() not in written  # ...but no credential, in any part
    start, resp = events[0], events[2]
    assert sorted(start["credentials_removed"]) == [
        "authorization",
        "cookie",
        "proxy-authorization",
        "x-api-key",
        "x-upstream-token",
    ]
    assert start["headers"]["mcp-session-id"] == "sess-1"
    assert start["headers"][":authority"] == "gw.local"
    assert sorted(resp["credentials_removed"]) == ["set-cookie", "x-refresh-token"]


async def test_reset_mid_sse_records_the_tail_and_a_reset_end(rig: Rig) -> None:
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="sess-1"))
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(response_headers("text/event-stream"))
    tail = b'id: 1\ndata: {"jsonrpc":"2.0","id":7,"res'
    await ex.on_response_body(body(_sse(_progress(1)) + tail, end=False))

    rig.clock.now = 1002.5
    ex.finish("reset", "client or Envoy cancelled the stream")
    ex.finish("complete")  # a second call changes nothing

    events = (await rig.recorded())["sess-1"]
    assert _types(events) == [
        "exchange.start",
        "mcp.request",
        "http.response",
        "mcp.response",
        "http.chunk",
        "exchange.end",
    ]
    assert events[3]["messages"] == [_progress(1)]
    assert body_bytes(events[4]["body"]) == tail
    assert events[4]["size"] == len(tail)
    end = events[5]
    assert (end["outcome"], end["detail"], end["status"]) == ("reset", "client or Envoy cancelled the stream", 200)
    assert end["duration_ms"] == pytest.approx(2500.0)


async def test_reset_before_the_server_answers_is_recorded_under_a_synthetic_session(rig: Rig) -> None:
    ex = rig.exchange()
    await ex.on_request_headers(request_headers())  # an initialize: no session yet
    await ex.on_request_body(body(json.dumps(INIT).encode()))

    ex.finish("reset", "upstream connection refused")

    recorded = await rig.recorded()
    assert list(recorded) == ["x-ex1"]
    assert _types(recorded["x-ex1"]) == ["exchange.start", "mcp.request", "exchange.end"]
    assert recorded["x-ex1"][-1]["outcome"] == "reset"


async def test_response_without_body_ends_at_the_headers(rig: Rig) -> None:
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="s"))
    await ex.on_request_body(body(b'{"jsonrpc":"2.0","method":"notifications/initialized"}'))

    await ex.on_response_headers(headers({":status": "202"}, end=True))

    assert ex.finished
    events = (await rig.recorded())["s"]
    assert _types(events) == ["exchange.start", "mcp.request", "http.response", "exchange.end"]
    assert (events[-1]["outcome"], events[-1]["status"]) == ("complete", 202)


def _struct(**fields: str) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(fields)
    return s


@pytest.mark.parametrize(
    ("attributes", "extra", "client"),
    [
        pytest.param(
            {"envoy.filters.http.ext_proc": _struct(**{"source.address": "10.0.0.7:5555"})},
            {},
            "10.0.0.7:5555",
            id="ext-proc-attribute",
        ),
        pytest.param(None, {"x-forwarded-for": "1.1.1.1, 10.0.0.9"}, "10.0.0.9", id="last-xff-hop"),
        pytest.param(None, {}, "", id="unknown"),
    ],
)
async def test_client_address(rig: Rig, attributes: Any, extra: dict[str, str], client: str) -> None:
    ex = rig.exchange()

    await ex.on_request_headers(request_headers(session="s", **extra), attributes)
    ex.finish("reset")

    assert (await rig.recorded())["s"][0]["client"] == client


@dataclass
class Unwell:
    """A recorder that does not accept events, its store, and how to make it well again."""

    recorder: Recorder
    store: FileStore
    recover: Callable[[], Awaitable[None]]


async def _store_failing(tmp_path: Path) -> Unwell:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the recordings folder should be")
    store = FileStore(blocker / "rec")
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=0.01))
    await rec.start()
    rec.emit(McpRequest(session="probe"))
    deadline = time.monotonic() + 5
    while rec.healthy:  # wait on the condition, not a fixed sleep
        assert time.monotonic() < deadline, "store never reported failure"
        await asyncio.sleep(0.002)

    async def recover() -> None:
        blocker.unlink()

    return Unwell(rec, store, recover)


async def _queue_full(tmp_path: Path) -> Unwell:
    store = FileStore(tmp_path / "rec")
    rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(queue_size=1))  # not started: nothing drains
    rec.emit(McpRequest(session="probe"))
    return Unwell(rec, store, rec.start)


@pytest.mark.parametrize(
    "make", [pytest.param(_store_failing, id="store-failing"), pytest.param(_queue_full, id="queue-full")]
)
async def test_recorder_not_accepting_refuses_with_503_when_recording_is_required(
    tmp_path: Path, make: Callable[[Path], Awaitable[Unwell]]
) -> None:
    unwell = await make(tmp_path)
    assert not unwell.recorder.accepting
    ex = Exchange(_gateway(unwell.recorder, Clock(), required=True))

    resp = await ex.on_request_headers(request_headers(session="s", **{"x-request-id": "req-42"}))
    ex.finish("reset")  # as the stream loop does when Envoy ends the stream

    status, doc, hdrs = _immediate(resp)
    assert status == 503 and hdrs["x-request-id"] == "req-42"  # what the operator finds the reason by in the log
    assert doc == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {"code": -32004, "message": "recording unavailable; request refused"},
    }
    await unwell.recover()
    await unwell.recorder.close()
    await unwell.store.close()
    assert unwell.store.list_sessions() == ["probe"]  # the refused exchange left no trace, the earlier event did


async def test_recorder_not_accepting_is_let_through_when_recording_is_optional(tmp_path: Path) -> None:
    unwell = await _queue_full(tmp_path)
    ex = Exchange(_gateway(unwell.recorder, Clock(), required=False))

    r1 = await ex.on_request_headers(request_headers(session="s"))
    r2 = await ex.on_request_body(body(json.dumps(CALL).encode()))

    assert [r1.WhichOneof("response"), r2.WhichOneof("response")] == ["request_headers", "request_body"]
    assert unwell.recorder.lost_events == 2  # counted, not silently dropped


async def test_queue_full_mid_exchange_fails_closed_when_recording_is_required(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "rec")
    rec = Recorder(
        store, Spool.beside(store, "w"), RecorderOptions(queue_size=1)
    )  # not started: the second event finds the queue full
    ex = Exchange(_gateway(rec, Clock(), required=True))
    await ex.on_request_headers(request_headers(session="s"))

    with pytest.raises(StoreError, match="recording queue full"):
        await ex.on_request_body(body(json.dumps(CALL).encode()))


async def test_reset_after_every_request_was_answered_is_complete(rig: Rig) -> None:
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="sess-1"))
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(response_headers("text/event-stream"))
    answer = {"jsonrpc": "2.0", "id": CALL["id"], "result": {"content": []}}
    await ex.on_response_body(body(_sse(_progress(1), answer), end=False))

    ex.finish("reset", "client or Envoy cancelled the stream")  # the client hung up once it had its answer

    end = (await rig.recorded())["sess-1"][-1]
    assert (end["outcome"], end["detail"]) == ("complete", "client closed the stream after the last response")


async def test_session_less_request_is_refused_when_its_held_events_could_not_be_recorded(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    ex = rig.exchange()
    await ex.on_request_headers(request_headers())  # initialize: no session yet, its events are held
    monkeypatch.setattr(Recorder, "accepting", property(lambda self: False))  # the queue filled meanwhile

    resp = await ex.on_request_body(body(json.dumps(INIT).encode()))

    status, doc, hdrs = _immediate(resp)
    assert status == 503 and doc["error"]["message"] == "recording unavailable; request refused"
    assert hdrs["x-request-id"] == ex.id  # no x-request-id from Envoy: the exchange id, as in the access line


async def test_a_token_in_the_query_string_is_not_recorded(rig: Rig) -> None:
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(path="/weather/mcp?access_token=qs-secret-91&page=2", session="s"))
    ex.finish("reset")
    start = (await rig.recorded())["s"][0]
    assert start["path"] == "/weather/mcp?access_token=[REDACTED:builtin-password-field]&page=2"
    assert start["headers"][":path"] == start["path"]
    assert start["redactions"] == [
        {"rule": "builtin-password-field", "pointer": "/query/access_token", "kind": "key", "count": 1}
    ]
    assert b"qs-secret-91" not in rig.written_bytes()


async def test_credentials_in_header_values_and_query_values_are_not_recorded(rig: Rig) -> None:
    ghp = "ghp_" + "Zz09" * 10
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    ex = rig.exchange()
    extra = {"x-access": "AKIAIOSFODNN7EXAMPLE", "x-github-pat": ghp, "x-note": f"forwarded {ghp}"}
    await ex.on_request_headers(request_headers(path=f"/weather/mcp?pat={ghp}&q={jwt}&page=2", session="s", **extra))
    ex.finish("reset")

    start = (await rig.recorded())["s"][0]
    written = rig.written_bytes()
    for secret in (ghp, jwt, "AKIAIOSFODNN7EXAMPLE"):
        assert secret.encode() not in written
    assert "x-github-pat" in start["credentials_removed"]
    assert start["headers"]["x-access"] == "[REDACTED:builtin-aws-access-key]"
    assert start["headers"]["x-note"] == "forwarded [REDACTED:builtin-github-token]"
    assert {(r["rule"], r["pointer"]) for r in start["redactions"]} == {
        ("builtin-password-field", "/query/pat"),
        ("builtin-jwt", "/query/q"),
        ("builtin-aws-access-key", "/headers/x-access"),
        ("builtin-github-token", "/headers/x-note"),
    }


async def test_oversized_json_under_a_policy_is_withheld_not_stored_raw(rig: Rig, tmp_path: Path) -> None:
    import hashlib

    from extproc.policy.loader import load_policy

    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "p.yaml").write_text(
        "apiVersion: mcp-extproc/v1\nrules: []\n"
        "recording:\n  - servers: [weather]\n    redact: [{name: ssn, key: ssn}]\n"
    )
    raw = json.dumps({"jsonrpc": "2.0", "id": 7, "result": {"ssn": "SSN-123-45-6789", "pad": "y" * 3000}}).encode()
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="s"))
    ex.policy = load_policy(tmp_path / "pol", {"weather"})  # as a gateway with this policy would hold
    await ex.on_request_body(body(json.dumps(CALL).encode()))
    await ex.on_response_headers(response_headers("application/json"))
    parts = _chunks(raw, [700])
    for i, chunk in enumerate(parts):
        await ex.on_response_body(body(chunk, end=i == len(parts) - 1))

    chunks = [e for e in (await rig.recorded())["s"] if e["type"] == "http.chunk"]
    assert b"SSN-123-45-6789" not in rig.written_bytes()
    assert all("raw" not in c["body"] and c["body"]["sha256"] for c in chunks)
    assert chunks[0]["body"]["sha256"] == hashlib.sha256(raw[: chunks[0]["size"]]).hexdigest()
    assert sum(c["size"] for c in chunks) == len(raw)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "OPTIONS", "TRACE", "HEAD", "CONNECT"])
async def test_non_mcp_methods_are_refused_with_405_and_recorded(rig: Rig, method: str) -> None:
    ex = rig.exchange()

    status, doc, hdrs = _immediate(await ex.on_request_headers(request_headers(session="s", **{":method": method})))

    assert (status, hdrs["allow"]) == (405, "POST, GET, DELETE")
    assert doc["error"]["message"] == "method not allowed; MCP uses POST, GET and DELETE"
    end = (await rig.recorded())["s"][-1]
    assert (end["type"], end["outcome"], end["status"]) == ("exchange.end", "denied", 405)


async def test_origin_other_than_the_gateways_is_refused_without_auth(rig: Rig) -> None:
    ex = rig.exchange()
    status, _, _ = _immediate(await ex.on_request_headers(request_headers(origin="http://evil.example")))
    assert status == 403
    ok = await rig.exchange().on_request_headers(request_headers(session="s", origin="http://127.0.0.1:8080"))
    assert ok.WhichOneof("response") == "request_headers"


@pytest.mark.parametrize(
    ("encoding", "refused"),
    [("gzip", True), ("br", True), ("GZIP", True), ("identity", False), ("", False)],
)
async def test_encoded_response_under_a_policy_is_refused_with_502(
    rig: Rig, tmp_path: Path, encoding: str, refused: bool
) -> None:
    from extproc.policy.loader import load_policy

    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "p.yaml").write_text("apiVersion: mcp-extproc/v1\nrules: []\n")
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="s"))
    ex.policy = load_policy(tmp_path / "pol", {"weather"})
    extra = {"content-encoding": encoding} if encoding else {}
    resp = await ex.on_response_headers(response_headers("application/json", **extra))
    if refused:
        status, doc, _ = _immediate(resp)
        assert status == 502
        assert "cannot inspect" in doc["error"]["message"]
        end = (await rig.recorded())["s"][-1]
        assert (end["outcome"], end["status"], end["detail"].split(":")[0]) == ("denied", 502, "EncodedResponse")
    else:
        assert resp.WhichOneof("response") == "response_headers"


async def test_encoded_response_without_a_policy_passes_as_recorded_bytes(rig: Rig) -> None:
    """Nothing to filter or redact without a policy: the bytes are recorded as they came."""
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="s"))
    resp = await ex.on_response_headers(response_headers("application/json", **{"content-encoding": "gzip"}))
    assert resp.WhichOneof("response") == "response_headers"


async def test_progress_notifications_are_recorded_unredacted_under_the_builtin_redactions(
    rig: Rig, tmp_path: Path
) -> None:
    """progressToken is MCP's name for a progress stream, not a credential: recorded as sent, with no redaction."""
    from extproc.policy.loader import load_policy

    (tmp_path / "pol").mkdir()
    (tmp_path / "pol" / "p.yaml").write_text("apiVersion: mcp-extproc/v1\nrules: []\n")  # built-in redactions on
    call = {**CALL, "params": {**CALL["params"], "_meta": {"progressToken": "p-7"}}}
    result = {"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": "password=hunter2"}]}}
    ex = rig.exchange()
    await ex.on_request_headers(request_headers(session="s"))
    ex.policy = load_policy(tmp_path / "pol", {"weather"})
    await ex.on_request_body(body(json.dumps(call).encode()))
    await ex.on_response_headers(response_headers("text/event-stream"))
    await ex.on_response_body(body(_sse(_progress(1), _progress(2), result)))

    events = (await rig.recorded())["s"]
    request = next(e for e in events if e["type"] == "mcp.request")
    assert (request["messages"], request["redactions"]) == ([call], [])
    responses = [e for e in events if e["type"] == "mcp.response"]
    assert [r["messages"] for r in responses[:2]] == [[_progress(1)], [_progress(2)]]
    assert [r["redactions"] for r in responses[:2]] == [[], []]
    # the built-ins are on: the real secret in the result is still redacted
    assert [r["rule"] for r in responses[2]["redactions"]] == ["builtin-password-assignment"]
