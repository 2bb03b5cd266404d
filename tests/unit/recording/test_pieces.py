"""Response pieces on the record: events and documents parsed and redacted, raw chunks, withheld bodies."""

from __future__ import annotations

import json
from hashlib import sha256
from pathlib import Path

import pytest

from extproc.mcp.body import Piece
from extproc.mcp.sse import SseEvent
from extproc.policy.capture import Capture, CaptureLevel
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.loader import load_policy
from extproc.recording.exchange_log import ExchangeLog
from extproc.recording.pieces import record_piece


class Sink:
    accepting = True

    def __init__(self) -> None:
        self.events: list = []

    def emit(self, event: object) -> bool:
        self.events.append(event)
        return True

    async def written(self) -> None:
        return None


def _log() -> tuple[ExchangeLog, Sink]:
    sink = Sink()
    log = ExchangeLog("ex1", sink, lambda: 1.0, required=True)
    log.set_unit("s")
    return log, sink


def test_an_sse_event_answering_a_request_is_an_mcp_response_and_names_the_id() -> None:
    log, sink = _log()
    data = '{"jsonrpc":"2.0","id":7,"result":{"content":[]}}'
    event = SseEvent(data=data, event="message", id="3")
    answered = record_piece(log, None, "demo", Piece(raw=f"data: {data}\n\n".encode(), event=event))
    assert answered == {"7"}
    [ev] = sink.events
    assert ev.type == "mcp.response" and ev.messages == [{"jsonrpc": "2.0", "id": 7, "result": {"content": []}}]
    assert (ev.sse_event, ev.sse_id) == ("message", "3")


def test_raw_bytes_are_a_chunk_and_a_withheld_body_keeps_only_size_and_hash() -> None:
    log, sink = _log()
    assert record_piece(log, None, "demo", Piece(raw=b"plain text")) == set()
    record_piece(log, None, "demo", Piece(raw=b"secret" * 10), withheld="JSON body over the limit")
    kept, withheld = sink.events
    assert kept.type == "http.chunk" and kept.size == 10
    assert withheld.body == {"withheld": "JSON body over the limit", "sha256": sha256(b"secret" * 10).hexdigest()}
    assert b"secret" not in repr(withheld.to_dict()).encode()


POLICY = """
apiVersion: mcp-extproc/v1
recording:
  - servers: [demo]
    redact: [{name: pin, pattern: 'PIN \\d{4}'}]
"""


def _policy(tmp_path: Path) -> CompiledPolicy:
    (tmp_path / "p.yaml").write_text(POLICY)
    return load_policy(tmp_path, {"demo"})


@pytest.mark.parametrize(
    ("level", "text"),
    [("full", "PIN 1234"), ("redacted", "[REDACTED:pin]"), ("shape", "[shape:string:8:"), ("metadata", None)],
)
def test_each_capture_level_keeps_what_it_names(tmp_path: Path, level: CaptureLevel, text: str | None) -> None:
    log, sink = _log()
    data = '{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"PIN 1234"}],"isError":false}}'
    piece = Piece(raw=data.encode(), document=True)
    record_piece(log, _policy(tmp_path), "demo", piece, capture=Capture(level, b"k" * 32))
    [ev] = sink.events
    result = ev.messages[0]["result"]
    if text is None:
        assert result == {"isError": False}
    else:
        assert result["content"][0]["text"].startswith(text)
    assert ("PIN 1234" in json.dumps(ev.to_dict())) == (level == "full")
    assert ev.body.get("capture") == (level if level in ("shape", "metadata") else None)
