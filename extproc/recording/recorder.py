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

This module is the public API (emit, commit points, start and close, health); the writer's round is writer.py.
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
from extproc.recording.spool import Spool
from extproc.recording.store import Store
from extproc.recording.streams import Streams
from extproc.recording.uploader import Uploader
from extproc.recording.writer import WAKE_AT, RecorderOptions, WriterRound

log = logging.getLogger(__name__)


def new_writer_id() -> str:
    """Unique per processor process: each writer owns its own stream per session, so no file is shared."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


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


class Recorder(WriterRound):
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
        self._woken_by_emit = False  # the writer's last sleep was ended by emit() (a round's first event)
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
        # Only a round's first event wakes it, and only from a long sleep (see ``WriterRound._next_round``).
        if waiter is not None and (not self._lingering or len(self._buf) >= WAKE_AT) and not waiter.done():
            self._woken_by_emit = True
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

    async def flushed(self, within: float = 5.0) -> None:
        """Wait until everything emitted so far has been written and synced (for tests and shutdown)."""
        self._synced.clear()
        if self._buf or self._has_ops() or self._seal_due() or self._wrote_inline:
            await asyncio.wait_for(self._synced.wait(), within)
        failure = await self.spool.behind.settled(within)  # seals and the fsync queued behind
        if failure is not None:
            raise failure


def _expire(fut: asyncio.Future[None], within: float) -> None:
    if not fut.done():
        fut.set_exception(StoreError(f"recording events not written to the spool within {within:g}s"))
