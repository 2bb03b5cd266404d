"""The recorder: a bounded buffer in front of the spool, batched writes, commit points for the data path.

``emit`` never blocks the data path: it appends to a plain list or reports that it could not; only the first
event of a round wakes the writer, which then lingers a few milliseconds so the events of nearby exchanges share
the round. The writer task chains the round's events into their streams (``streams.py``: one hash chain per
session and writer, segments cut on a seal tick), hands the ops to the spool (appends on the loop; a new stream's
folder in one thread hop) and queues the seals (segment hash, signed manifest) and the fsync of the flush interval
behind, off the data path (``behind.py``); the uploader ships sealed segments in batches. An
exchange at a commit point (``written``: before its request goes upstream, before a response chunk goes to the
client) cuts the linger short and waits for that round's write: group commit. A stream ends, with a ``final``
manifest, when an exchange states that its session is over (``ExchangeEnd.ends_session``), when the session goes
idle, or when the processor stops.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from extproc.errors import StoreError
from extproc.recording.behind import SpoolWriteError
from extproc.recording.events import Event
from extproc.recording.manifest import Signer
from extproc.recording.spool import Append, Spool, Unfinished
from extproc.recording.store import Store
from extproc.recording.streams import Stream, Streams
from extproc.recording.uploader import Uploader

log = logging.getLogger(__name__)

_MAX_BATCH = 4096  # events chained per round (a round is one thread hop to the spool)
# At shutdown the seals queued behind get SETTLE_STEP_S at a time while they keep moving, SETTLE_BUDGET_S in all: a
# pod has 60 s to stop, and the uploader ships what they sealed afterwards.
SETTLE_STEP_S, SETTLE_BUDGET_S = 5.0, 35.0


def new_writer_id() -> str:
    """Unique per processor process: each writer owns its own stream per session, so no file is shared."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


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
    linger: float = 0.005  # s the writer gathers a round before writing it (at most flush_interval)

    @property
    def seal_every(self) -> float:
        """The seal tick in seconds: ``seal_interval``, else five flush intervals."""
        return self.seal_interval if self.seal_interval is not None else 5 * self.flush_interval


@dataclass(frozen=True, slots=True)
class RecorderStats:
    """What the recorder can say about itself: health, throughput, backlog (queued and spooled) and uploads."""

    healthy: bool
    accepting: bool
    written_events: int
    lost_events: int
    queued_events: int  # emitted, not yet in the spool
    segments_waiting: int  # sealed in the spool, not yet in the store
    disk_jobs_waiting: int  # seals, fsyncs and file closes queued behind the data path (spool.behind)
    spool_bytes: int
    uploads: int
    upload_failures: int
    store_failing: bool
    unavailable: str = ""  # why new exchanges are refused (behind.UNAVAILABLE_REASONS), "" while available


class Recorder:
    """Queue -> batch -> chain -> spool -> (uploader) -> store. ``healthy`` is False while the spool is failing."""

    def __init__(
        self,
        store: Store,
        spool: Spool,
        options: RecorderOptions | None = None,
        *,
        signer: Signer | None = None,
        uploader: Uploader | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Records into ``spool`` (whose writer id it records as), ships to ``store`` through ``uploader``."""
        options = options or RecorderOptions()
        self.store = store
        self.options = options
        self.writer_id = spool.writer
        self.signer = signer or Signer(None)
        self.streams = Streams(
            self.writer_id,
            self.signer,
            segment_bytes=options.segment_bytes,
            segment_age=options.segment_age,
            seal_interval=options.seal_every,
            seal_rate=options.seal_rate,
            idle_timeout=options.idle_timeout,
            clock=clock,
            wall_clock=wall_clock,
        )
        self.healthy = True
        self.lost_events = 0
        self.written_events = 0
        self.spool = spool
        self.uploader = uploader or Uploader(spool, store)
        # Events not yet chained. A list, not an asyncio.Queue: the writer is woken once per round, not per event.
        self._buf: list[Event] = []
        self._max_queue = options.queue_size
        self._waiter: asyncio.Future[None] | None = None
        self._lingering = False  # the writer gathers a round: emit() does not wake it, a commit point does
        self._stopping = False
        self.linger = min(options.linger, options.flush_interval)
        self._clock = clock
        self.wall_clock = wall_clock
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()
        # Commit points (``written``): exchanges that must not go on before their events are in the spool file.
        self._accepted = 0  # events taken by emit()
        self._done = 0  # of those, how many are in the spool file (or were dropped by recording.required: false)
        self._commits: list[tuple[int, asyncio.Future[None]]] = []
        self._in_round = False  # the writer is between taking a batch and settling it (it may await a thread)
        self._wrote_inline = False  # commit points wrote to the spool since the writer last looked: fsync owed
        self.inline_commits = 0  # commit points written at once, without waiting for the writer (tests, benchmarks)
        self._failure: StoreError | None = None  # the last spool failure (the reason of an unhealthy recorder)
        self._unavailable: tuple[str, str] | None = None  # the state last logged

    @property
    def accepting(self) -> bool:
        """Whether a new exchange can be recorded now: spool writable and not full, queue not full."""
        # New exchanges are admitted only below 90% of the queue: the rest is headroom for the events of exchanges
        # already admitted, so a burst refuses new work (503) instead of failing work in flight.
        admit = len(self._buf) < self._max_queue * 0.9
        return self.healthy and admit and (self.spool.has_room or not self.spool.is_open)

    def stats(self) -> RecorderStats:
        """A reading for metrics and readiness (no locks: plain integer reads on the event loop's thread)."""
        up = self.uploader
        return RecorderStats(
            self.healthy, self.accepting, self.written_events, self.lost_events, len(self._buf),
            len(self.spool.ready), self.spool.behind.pending, self.spool.size, up.uploaded, up.failures, up.failing,
            self._note_unavailable(),
        )  # fmt: skip

    def unavailable(self) -> tuple[str, str] | None:
        """Why new exchanges are refused now, as (reason, detail naming errno and path); None while available."""
        if not self.healthy:
            err = self._failure
            reason = err.reason if isinstance(err, SpoolWriteError) else "spool_unwritable"
            return reason, str(err or "recording spool failing")
        if self.spool.is_open and not self.spool.has_room:
            full = f"spool {self.spool.path} holds {self.spool.size} of {self.spool.max_bytes} bytes"
            if self.uploader.failing:
                return "store_refusing", f"the store refuses segments and the {full}"
            return "spool_full", full
        return None

    def _note_unavailable(self) -> str:
        """Log entering and leaving (and changing) an unavailable state, once each; returns the reason or ""."""
        now = self.unavailable()
        before, self._unavailable = self._unavailable, now
        if now is not None and (before is None or before[0] != now[0]):
            log.error("recording unavailable (%s): %s; new exchanges are refused with 503", now[0], now[1])
        elif now is None and before is not None:
            log.warning("recording available again (was %s: %s)", before[0], before[1])
        return now[0] if now is not None else ""

    def on_uploaded(self, observe: Callable[[float], None]) -> None:
        """Call ``observe`` with each stored segment's latency (sealed to stored, seconds)."""
        self.uploader.on_uploaded.append(observe)

    def emit(self, event: Event) -> bool:
        """Enqueue without blocking; False (and counted) when the queue is full."""
        if len(self._buf) >= self._max_queue:
            self.lost_events += 1
            return False
        self._buf.append(event)
        self._accepted += 1
        waiter = self._waiter
        if waiter is not None and not self._lingering and not waiter.done():  # only a round's first event wakes it
            waiter.set_result(None)
        return True

    async def start(self) -> None:
        try:
            await self.spool.open()
        except StoreError as e:  # the loop retries; until then nothing is admitted (fail closed)
            self._set_health(False, e)
        self.uploader.start()
        self._task = asyncio.create_task(self._run(), name="recorder")

    async def close(self, drain_within: float = 10.0) -> None:
        """Drain the queue, end every stream (final manifests), sync, and ship what the store will take."""
        if self._task is None:
            return
        self._stopping = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        t0 = time.monotonic()
        await self._task
        self._task = None
        t1 = time.monotonic()
        await self.uploader.stop()
        if not await self.uploader.drain(drain_within):
            log.error("store unavailable at shutdown: %d segments stay in the spool", len(self.spool.ready))
        log.info("recorder: streams ended in %.1f s, spool shipped in %.1f s", t1 - t0, time.monotonic() - t1)
        await self.spool.close()
        log.info(
            "recorder closed: written_events=%d lost_events=%d %s",
            self.written_events,
            self.lost_events,
            self.uploader.summary(),
        )

    async def written(self, within: float = 5.0) -> None:
        """Return once every event emitted so far is written to the spool file: a commit point of the data path.

        Written means in the operating system's hands: a processor killed (``kill -9``) from here on loses none of
        these events; the fsync that also covers a machine crash follows within ``flush_interval``. Every exchange
        waiting in the same round shares one thread hop (group commit), and a waiting round skips the linger.
        Raises ``StoreError`` at once while the spool is failing, and when the write does not happen within
        ``within`` seconds: the caller fails closed."""
        target = self._accepted
        if target <= self._done:
            return
        if not self.healthy or self._task is None:
            raise StoreError("recording spool not writable; events not on disk")
        if self._write_now():
            if target <= self._done:
                self.inline_commits += 1
                return
            if not self.healthy:
                raise StoreError("recording spool not writable; events not on disk")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._commits.append((target, fut))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
        timer = loop.call_later(within, _expire, fut, within)  # a timer handle, not a wait_for task per commit
        try:
            await fut
        finally:
            timer.cancel()

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

    async def flushed(self, within: float = 5.0) -> None:
        """Wait until everything emitted so far has been written and synced (for tests and shutdown)."""
        self._synced.clear()
        if self._buf or self._has_ops() or self._seal_due() or self._wrote_inline:
            await asyncio.wait_for(self._synced.wait(), within)
        failure = await self.spool.behind.settled(within)  # seals and the fsync queued behind
        if failure is not None:
            raise failure

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
        an exchange waiting at a commit point cuts the linger short."""
        # A commit point that could not write at once (a new stream's folder) left chained lines for this round.
        if not self._buf and not self._stopping and not (self._commits and self.streams.has_lines):
            await self._sleep(wake_after)
        if self._buf and self.linger > 0 and not self._stopping and not self._commits:
            await self._sleep(self.linger, lingering=True)

    async def _sleep(self, seconds: float | None, lingering: bool = False) -> None:
        """Sleep ``seconds`` (None: until woken). ``written`` wakes it; ``emit`` too, unless it is a linger."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        self._lingering = lingering
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


def _expire(fut: asyncio.Future[None], within: float) -> None:
    if not fut.done():
        fut.set_exception(StoreError(f"recording events not written to the spool within {within:g}s"))


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
