"""The recorder's writer round (``Recorder`` in recorder.py is the public API over it): chain the queued events into
their streams, append them to the spool, settle the commit points waiting on them, queue seals and fsyncs behind.

One round: sleep until an event is emitted, linger a few milliseconds so nearby exchanges share the round, chain
(``streams.py``), write (one thread hop to the spool; appends, seals behind), release the exchanges waiting at a
commit point, fsync on the flush interval. A commit point may also do the round inline (``_write_now``) when it
needs no thread hop. The state lives on the ``Recorder``; this class holds the round's half of the methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from extproc.errors import StoreError
from extproc.recording.events import Event
from extproc.recording.spool import Spool
from extproc.recording.spool_files import Append, Unfinished
from extproc.recording.streams import Stream, Streams

log = logging.getLogger("extproc.recording.recorder")  # one logger for the recorder, whichever half speaks

_MAX_BATCH = 4096  # events chained per round (a round is one thread hop to the spool)
WAKE_AT = 1024  # events queued that wake a writer even while it lingers (``Recorder.emit``)
# At shutdown the seals queued behind get SETTLE_STEP_S at a time while they keep moving, SETTLE_BUDGET_S in all: a
# pod has 60 s to stop, and the uploader ships what they sealed afterwards.
SETTLE_STEP_S, SETTLE_BUDGET_S = 5.0, 35.0


@dataclass(frozen=True, slots=True)
class RecorderOptions:
    """How the recorder batches, seals and bounds its work, in seconds and bytes (``setup.recorder_options`` builds
    it once from ``recording:``, where the units are converted; like ``runtime.ExchangeOptions`` for an exchange)."""

    queue_size: int = 10_000  # events emitted and not yet chained; past it emit() refuses (and counts the loss)
    flush_interval: float = 0.2  # s between fsyncs of the spool: what a crash of the host can lose
    # s between seal ticks (a segment is sealed on the tick after an exchange of its stream ended: every seal costs
    # a signature, fsyncs and a store write, and the seals of one tick share their disk work); None: 5 x flush.
    seal_interval: float | None = None
    seal_rate: float = 100.0  # seals per second at most
    segment_bytes: int = 4 << 20  # a segment is cut past this size
    segment_age: float = 2.0  # s: ... or this age
    idle_timeout: float = 1800.0  # s of silence that end a session's stream (final manifest)
    required: bool = True  # fail closed: a full spool refuses events; False drops them (counted) instead
    linger: float = 0.005  # s a round gathers before it writes (at most flush_interval); with ``required``, a
    # round started by an emit waits flush_interval instead: commit points write, the round comes for the fsync

    @property
    def seal_every(self) -> float:
        """The seal tick in seconds: ``seal_interval``, else five flush intervals."""
        return self.seal_interval if self.seal_interval is not None else 5 * self.flush_interval


class WriterRound:
    """The writer task's round and the commit points' inline round, over the state ``Recorder.__init__`` sets."""

    options: RecorderOptions
    streams: Streams
    spool: Spool
    healthy: bool
    lost_events: int
    written_events: int
    linger: float
    _buf: list[Event]
    _accepted: int
    _done: int
    _commits: list[tuple[int, asyncio.Future[None]]]
    _waiter: asyncio.Future[None] | None
    _lingering: bool
    _woken_by_emit: bool
    _stopping: bool
    _clock: Callable[[], float]
    _synced: asyncio.Event
    _in_round: bool
    _wrote_inline: bool
    _failure: StoreError | None
    _note_unavailable: Callable[[], str]  # logs a change of availability; the Recorder's method (``unavailable``)

    def _write_now(self) -> bool:
        """The writer's round for a commit point, done here and now when it needs no thread hop: the queued events
        are chained and appended to their open segment files (page-cache writes; seals go behind, as in a round).
        The exchange goes on without waiting for the writer's task: no future, no timer, no extra turn of the
        event loop. Not while the writer is in a round of its own (it may be waiting on a thread with a batch in
        hand), nor when a stream's folder must be created first, nor at shutdown: then the writer does it.
        Returns whether it wrote."""
        if self._in_round or self._stopping or not self._buf or len(self._buf) > _MAX_BATCH or not self.spool.is_open:
            return False
        upto, scanned = self._chain_queued(stopping=False)
        ops, owners = self.streams.batch()
        if ops and self.spool.new_folders(ops):
            self._wake()  # chained already; the writer makes the folder (a thread hop) and writes
            return False
        done, error = self.spool.write_known(ops) if ops else (0, None)
        error = self._spooled(ops, owners, done, error)
        if scanned:
            self.streams.settle()
        if error is not None:
            self._wake()  # the writer retries and settles the waiters
            return False
        if not self.streams.has_lines:
            self._settle_commits(upto, None)
        # The writer owes these lines an fsync within flush_interval. It hears of them in its next round: the emit()
        # of these events woke it already (or it lingers, or it is in a round), so no wake-up of its own is needed.
        self._wrote_inline = self._wrote_inline or done > 0
        return True

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _settle_commits(self, upto: int, error: str | None) -> None:
        """Release the commit waiters whose events are written; with ``error`` (spool failing) fail the others."""
        self._done = max(self._done, upto)
        waiting, self._commits = self._commits, []
        for target, fut in waiting:
            if fut.done():
                continue
            if target <= self._done:
                fut.set_result(None)
            elif error is not None:
                fut.set_exception(StoreError(error))
            else:
                self._commits.append((target, fut))

    async def _settle_behind(self) -> StoreError | None:
        """Wait for the last seals and the closing fsync while the queue behind shrinks (a busy disk or CPU can
        leave thousands), at most ``SETTLE_BUDGET_S`` in all; a queue that stops moving is left to the completer."""
        behind, deadline = self.spool.behind, self._clock() + SETTLE_BUDGET_S
        while True:
            before = behind.completed
            failure = await behind.settled(within=SETTLE_STEP_S)
            moved = behind.completed > before
            if failure is None or behind.failure is not None or not moved or self._clock() > deadline:
                return failure

    def _has_ops(self) -> bool:
        return bool(self.streams.pending)

    def _seal_due(self) -> bool:
        return self.streams.seal_due()

    async def _run(self) -> None:
        last_sync = self._clock()
        dirty = False  # written to the spool, not yet fsynced
        while True:
            await self._next_round(self._timeout(dirty or self._wrote_inline, last_sync))
            self._in_round = True
            stopping = self._stopping
            upto, scanned = self._chain_queued(stopping)
            # fsync on the interval: commit points already wait for the write, which survives the process dying
            sync_due = stopping or self._clock() - last_sync >= self.options.flush_interval
            # Appends now (what commit points wait for); seals and fsyncs queue behind, in order, off the data path.
            wrote = await self._write()
            if not self.streams.has_lines:
                self._settle_commits(upto, None)  # nothing of this round waits to be written
            elif not self.healthy:
                self._settle_commits(upto, "recording spool failing; events not on disk")
            dirty, self._wrote_inline = dirty or wrote or self._wrote_inline, False
            if scanned:
                self.streams.settle()
            if self.healthy and dirty and sync_due:
                self.spool.sync_behind()
                dirty, last_sync = False, self._clock()
            elif not self.healthy and sync_due:  # a sync attempt is also the health probe
                if await self._sync():
                    dirty, last_sync = False, self._clock()
            self._in_round = False
            self._note_unavailable()  # a spool fills and drains with no health change: say when it does
            if not dirty and not self._has_ops() and not self._seal_due() and not self._buf:
                self._synced.set()
            if stopping and not self._buf:
                break
        failure = await self._settle_behind()
        if failure is not None:
            log.error("recording spool: seals not finished at shutdown (the completer finishes them): %s", failure)
        self._settle_commits(self._done, "recorder stopped before the events were written")
        lost = self.streams.unwritten_lines()
        if lost:  # the spool is still failing at shutdown: say exactly what could not be written
            self.lost_events += lost
            log.error("recording spool failing at shutdown: %d events not written", lost)

    def _timeout(self, dirty: bool, last_sync: float) -> float | None:
        """How long the writer may sleep with nothing emitted: it still owes retries, syncs, seals and idle ends."""
        if self._has_ops() or not self.healthy:  # the spool failed: retry once per interval, not in a tight loop
            return self.options.flush_interval
        if dirty:
            return max(0.0, self.options.flush_interval - (self._clock() - last_sync))
        if self._seal_due():  # a held-back seal comes due on the next tick
            return self.streams.next_tick()
        if self.streams.open:  # segments age and sessions go idle even without traffic
            return min(self.options.segment_age, self.options.idle_timeout, 1.0)
        return None

    async def _next_round(self, wake_after: float | None) -> None:
        """Sleep until an event is emitted (or ``wake_after`` seconds), then linger so the round gathers neighbours;
        an exchange waiting at a commit point cuts the linger short.

        With ``required`` the commit points write the events themselves (``_write_now``): a round started by an
        emit then waits a whole flush interval, and comes for what is left (events no commit point covers) and the
        fsync, which thus covers every exchange of the interval: at a low rate one timer and one thread hop per
        interval instead of a linger and an fsync per exchange. A queue of ``WAKE_AT`` events cuts it short."""
        # A commit point that could not write at once (a new stream's folder) left chained lines for this round.
        by_emit = False
        if not self._buf and not self._stopping and not (self._commits and self.streams.has_lines):
            self._woken_by_emit = False
            await self._sleep(wake_after)
            by_emit = self._woken_by_emit
        if not self._buf or self._stopping or self._commits or len(self._buf) >= WAKE_AT:
            return
        wait = self.options.flush_interval if by_emit and self.options.required else self.linger
        if wait > 0:
            await self._sleep(wait, lingering=True)

    async def _sleep(self, seconds: float | None, lingering: bool = False) -> None:
        """Sleep ``seconds`` (None: until woken). ``written`` wakes it; ``emit`` only if the sleep is a long one: a
        writer back within a flush interval (a linger, an fsync due) writes what was emitted meanwhile then."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._lingering = lingering or (seconds is not None and seconds <= self.options.flush_interval)
        timer = loop.call_later(seconds, _wake, waiter) if seconds is not None else None
        try:
            await waiter
        finally:
            self._waiter, self._lingering = None, False
            if timer is not None:
                timer.cancel()

    def _chain_queued(self, stopping: bool) -> tuple[int, bool]:
        """Chain the queued events (a batch of them) into their streams and cut segments: the first half of a round.
        Returns how many emitted events are now chained or dropped, and whether ``cut`` scanned every stream."""
        batch = self._take(everything=stopping)
        upto = self._accepted - len(self._buf)  # every event emitted before this batch was taken
        return upto, self.streams.cut(self._chain(batch), stopping)

    def _take(self, everything: bool) -> list[Event]:
        if everything or len(self._buf) <= _MAX_BATCH:
            batch, self._buf = self._buf, []
        else:
            batch, self._buf = self._buf[:_MAX_BATCH], self._buf[_MAX_BATCH:]
        return batch

    def _chain(self, events: list[Event]) -> list[Stream]:
        """Chain the round's events into their streams; returns the streams where an exchange ended."""
        ended, dropped = self.streams.chain(events, None if self.options.required else self._room_for)
        for e in dropped:
            self.lost_events += 1  # counted and logged, never chained: what is kept still verifies
            log.warning("recording event lost (recording.required is false): %s %s", e.exchange, e.type)
        return ended

    def _room_for(self, size: int) -> bool:
        spool = self.spool
        return self.healthy and spool.is_open and spool.size + size <= spool.max_bytes

    # --- spool I/O ---------------------------------------------------------------------------------------------

    async def _write(self) -> bool:
        """Move pending ops of every stream into the spool in one batch, in order; on failure keep the rest.

        Appends are written when this returns; seals are queued behind (``Spool.write_behind``). A failure of the
        work behind (a seal or an fsync that the disk refuses) makes the recorder unhealthy until it succeeds.
        Returns whether something was written."""
        batch, owners = self.streams.batch()
        behind = self.spool.behind.failure
        if not batch:
            if behind is None and self.spool.is_open and not self.healthy:
                self._set_health(not self._has_ops())
            elif behind is not None:
                self._set_health(False, behind)
            return False
        try:
            done, error = await self.spool.write_behind(batch)
        except StoreError as e:  # the spool cannot be opened
            self._set_health(False, e)
            return False
        self._spooled(batch, owners, done, error)
        return done > 0

    def _spooled(
        self, ops: list[Append | Unfinished], owners: list[tuple[Stream, int]], done: int, error: StoreError | None
    ) -> StoreError | None:
        """The spool took the first ``done`` ops: drop them from their streams, and say the recorder's health (the
        work queued behind counts too). Returns the error that makes it unhealthy, if any."""
        self.written_events += self.streams.spooled(ops, owners, done)
        error = error or self.spool.behind.failure
        self._set_health(error is None and not self._has_ops(), error)
        return error

    async def _sync(self) -> bool:
        try:
            if not self.spool.is_open:
                await self.spool.open()
            await self.spool.sync()
        except StoreError as e:
            self._set_health(False, e)
            return False
        # Healthy again only once everything chained is durable in the spool, not merely when a sync works.
        self._set_health(not self._has_ops())
        return True

    def _set_health(self, ok: bool, error: StoreError | None = None) -> None:
        if error is not None:
            self._failure = error
        if ok != self.healthy:
            (log.info if ok else log.error)("recording spool %s%s", "recovered" if ok else "failing: ", error or "")
        self.healthy = ok
        self._note_unavailable()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
