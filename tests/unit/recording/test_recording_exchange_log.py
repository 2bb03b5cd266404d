"""The exchange log: events held until the session is known, numbered, and sent fail-closed."""

from __future__ import annotations

import pytest

from extproc.errors import StoreError
from extproc.recording.events import Event, ExchangeEnd, ExchangeStart, McpRequest
from extproc.recording.exchange_log import ExchangeLog, RecordingRefused


class Sink:
    def __init__(self, room: int = 100, accepting: bool = True) -> None:
        self.events: list[Event] = []
        self.room = room
        self.accepting = accepting

    def emit(self, event: Event) -> bool:
        if len(self.events) >= self.room:
            return False
        self.events.append(event)
        return True


def _clock() -> float:
    return 42.0


def test_events_are_held_until_the_session_is_named_then_sent_in_order() -> None:
    sink = Sink()
    log = ExchangeLog(sink, "ex1", _clock)

    log.emit(ExchangeStart(method="POST"))
    log.emit(McpRequest())
    assert sink.events == [] and log.holding
    log.name_session("sess")
    log.emit(ExchangeEnd())

    assert [(e.type, e.session, e.exchange, e.index, e.time) for e in sink.events] == [
        ("exchange.start", "sess", "ex1", 0, 42.0),
        ("mcp.request", "sess", "ex1", 1, 42.0),
        ("exchange.end", "sess", "ex1", 2, 42.0),
    ]
    assert not log.holding and log.sent == 3


def test_a_refused_event_fails_closed_when_recording_is_required() -> None:
    log = ExchangeLog(Sink(room=1), "ex1", _clock)
    log.name_session("sess")
    log.emit(ExchangeStart())

    with pytest.raises(RecordingRefused, match=r"event mcp\.request of exchange ex1 lost") as e:
        log.emit(McpRequest())
    assert isinstance(e.value, StoreError)  # the gateway's one error hierarchy: 503, and the stream is aborted


def test_an_event_that_need_not_be_recorded_never_raises() -> None:
    log = ExchangeLog(Sink(room=0), "ex1", _clock)

    log.name_session("sess", must=False)  # e.g. the end of an exchange already failing
    log.emit(ExchangeEnd(), must=False)

    assert log.sent == 0


def test_releasing_held_events_into_a_full_sink_fails_closed() -> None:
    log = ExchangeLog(Sink(room=1), "ex1", _clock)
    log.emit(ExchangeStart())
    log.emit(McpRequest())

    with pytest.raises(RecordingRefused):
        log.name_session("sess")


def test_optional_recording_logs_the_loss_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    log = ExchangeLog(Sink(room=0), "ex1", _clock, required=False)
    log.name_session("sess")

    log.emit(McpRequest())

    assert "recording event lost (recording.required is false): ex1 mcp.request" in caplog.text


@pytest.mark.parametrize(
    ("required", "accepting", "holding", "refused"),
    [
        pytest.param(True, False, True, True, id="held-and-not-accepting"),
        pytest.param(True, True, True, False, id="accepting"),
        pytest.param(True, False, False, False, id="nothing-held"),
        pytest.param(False, False, True, False, id="optional"),
    ],
)
def test_held_refusal(required: bool, accepting: bool, holding: bool, refused: bool) -> None:
    log = ExchangeLog(Sink(accepting=accepting), "ex1", _clock, required=required)
    if holding:
        log.emit(ExchangeStart())

    assert (log.held_refusal() is not None) is refused
