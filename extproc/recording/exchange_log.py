"""One exchange's recording events: numbered, held until the recording unit is known, sent fail-closed.

The unit (the MCP session, a stateless run, or the exchange alone) is often not known when the first events
happen: an initialize request's events wait for the server to name the session. The fail-closed rule lives here
and nowhere else: with ``required``, an event the sink cannot take stops the exchange (``StoreError``), and an
exchange may hold events only while the sink still accepts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from extproc.errors import StoreError
from extproc.ports import EventSink
from extproc.recording.events import Event

log = logging.getLogger(__name__)


class ExchangeLog:
    """The events of exchange ``exchange_id``, in order."""

    def __init__(self, exchange_id: str, sink: EventSink, clock: Callable[[], float], required: bool) -> None:
        self.exchange_id = exchange_id
        self.unit: str | None = None
        self._sink = sink
        self._clock = clock
        self._required = required
        self._index = 0
        self._held: list[Event] = []

    def emit(self, ev: Event, must: bool = True) -> None:
        """Number and time ``ev``; send it, or hold it until the unit is known. ``must``: fail closed if lost."""
        ev.exchange = self.exchange_id
        ev.index = self._index
        ev.time = self._clock()
        self._index += 1
        if self.unit is None:
            self._held.append(ev)
            return
        ev.session = self.unit
        self._send(ev, must)

    def set_unit(self, unit: str, must: bool = True) -> None:
        """The recording unit is known: every held event goes out under it."""
        self.unit = unit
        held, self._held = self._held, []
        for ev in held:
            ev.session = unit
            self._send(ev, must)

    async def commit(self) -> None:
        """A commit point: return once this exchange's events so far are on disk, so the data path may go on.

        Events still held (the unit not known yet: an ``initialize`` before the server names its session) cannot
        be written; they go out, and are committed, with the response. Without ``required`` nothing waits."""
        if self._required and not self._held:
            await self._sink.written()

    def cannot_hold(self) -> StoreError | None:
        """Held events are not queued yet: the request may go upstream only if the sink can still take them."""
        if self._held and self._required and not self._sink.accepting:
            return StoreError("recorder not accepting events; held events of a session-less exchange")
        return None

    def _send(self, ev: Event, must: bool) -> None:
        if self._sink.emit(ev) or not must:
            return
        if self._required:
            # Fail closed: the stream loop aborts the gRPC stream, so Envoy fails the request.
            raise StoreError(f"recording queue full; event {ev.type} of exchange {self.exchange_id} lost")
        log.warning("recording event lost (recording.required is false): %s %s", self.exchange_id, ev.type)
