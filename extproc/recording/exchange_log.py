"""The recording side of one exchange: the fail-closed rule, written once.

Events are numbered and stamped here. Until the recording unit is known (the MCP session, named by the server's
first response for an ``initialize`` or a stateless server) they are held; naming the unit releases them in
order. Each event then goes to the sink (the recorder); when the sink refuses one that must be recorded and
recording is required, ``RecordingRefused`` is raised: the caller aborts the exchange, so nothing passes that
was not recorded. When recording is optional the loss is logged (the recorder counts it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from extproc.errors import StoreError
from extproc.recording.events import Event

log = logging.getLogger(__name__)


class EventSink(Protocol):
    """Where events go (the Recorder): ``emit`` never blocks; ``accepting`` says whether new work fits."""

    @property
    def accepting(self) -> bool: ...

    def emit(self, event: Event) -> bool: ...


class RecordingRefused(StoreError):
    """An event that must be recorded could not be queued: the exchange fails closed."""


class ExchangeLog:
    """Holds, numbers and sends the events of one exchange (``exchange`` is its id)."""

    def __init__(self, sink: EventSink, exchange: str, clock: Callable[[], float], required: bool = True) -> None:
        self.sink = sink
        self.exchange = exchange
        self.required = required
        self.session: str | None = None  # the recording unit, once known
        self.sent = 0
        self._clock = clock
        self._index = 0
        self._held: list[Event] = []

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def emit(self, event: Event, must: bool = True) -> None:
        """Stamp (exchange, index, time) and send, or hold until the session is named."""
        event.exchange = self.exchange
        event.index = self._index
        event.time = self._clock()
        self._index += 1
        if self.session is None:
            self._held.append(event)
            return
        event.session = self.session
        self._send(event, must)

    def name_session(self, session: str, must: bool = True) -> None:
        """The recording unit is known: release what was held, in order, then send directly."""
        self.session = session
        held, self._held = self._held, []
        for event in held:
            event.session = session
            self._send(event, must)

    def held_refusal(self) -> RecordingRefused | None:
        """Held events are not queued yet: work may go on only if the sink can still take them (required mode)."""
        if self._held and self.required and not self.sink.accepting:
            return RecordingRefused("recorder not accepting events; held events of a session-less exchange")
        return None

    def _send(self, event: Event, must: bool) -> None:
        if self.sink.emit(event):
            self.sent += 1
            return
        if not must:
            return
        if self.required:
            raise RecordingRefused(f"recording queue full; event {event.type} of exchange {self.exchange} lost")
        log.warning("recording event lost (recording.required is false): %s %s", self.exchange, event.type)
