"""The exchange log: numbering, holding until the unit is known, and the fail-closed rule."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from extproc.errors import StoreError
from extproc.recording.events import Event, McpRequest
from extproc.recording.exchange_log import ExchangeLog


@dataclass
class Sink:
    accepting: bool = True
    takes: bool = True
    got: list[Event] = field(default_factory=list)

    def emit(self, event: Event) -> bool:
        if self.takes:
            self.got.append(event)
        return self.takes


def test_events_are_numbered_timed_and_held_until_the_unit() -> None:
    sink = Sink()
    log = ExchangeLog("ex1", sink, lambda: 5.0, required=True)
    log.emit(McpRequest())
    log.emit(McpRequest())
    assert sink.got == []
    log.set_unit("s1")
    log.emit(McpRequest())
    assert [(e.index, e.session, e.exchange, e.time) for e in sink.got] == [
        (0, "s1", "ex1", 5.0),
        (1, "s1", "ex1", 5.0),
        (2, "s1", "ex1", 5.0),
    ]


def test_required_fails_closed_and_optional_counts_on() -> None:
    log = ExchangeLog("ex1", Sink(takes=False), lambda: 0.0, required=True)
    log.set_unit("s")
    with pytest.raises(StoreError):
        log.emit(McpRequest())
    log.emit(McpRequest(), must=False)  # the end of an exchange never masks its outcome
    ExchangeLog("ex2", Sink(takes=False), lambda: 0.0, required=False).set_unit("s")


def test_holding_is_allowed_only_while_the_sink_accepts() -> None:
    sink = Sink()
    log = ExchangeLog("ex1", sink, lambda: 0.0, required=True)
    assert log.cannot_hold() is None
    log.emit(McpRequest())
    sink.accepting = False
    assert isinstance(log.cannot_hold(), StoreError)
    assert ExchangeLog("ex2", sink, lambda: 0.0, required=False).cannot_hold() is None
