"""The uploader: ships sealed segments from a spool to the store, in order, and deletes them only once stored.

A failing store is retried with exponential backoff and full jitter (so N workers that lost S3 together do not
come back in lockstep); meanwhile the spool grows, up to its bound. Segments go in batches: the ready ones are read
from the spool in one thread hop (up to a few MiB), put one by one, and deleted from the spool in one more hop.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable

from extproc.errors import StoreError
from extproc.recording.spool import Spool
from extproc.recording.spool_files import Sealed, read_segments
from extproc.recording.store import BatchStore, BlockingBatchStore, Segment, Store, put_each

log = logging.getLogger(__name__)
_BATCH = 64  # segments per batch at most (``Spool.load_many`` also stops at a few MiB)


class Uploader:
    """One task per spool. ``failing`` is True while the store refuses segments."""

    def __init__(
        self,
        spool: Spool,
        store: Store,
        *,
        backoff: float = 0.1,
        max_backoff: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        on_stored: Callable[[Segment], Awaitable[None]] | None = None,
    ) -> None:
        self.spool = spool
        self.on_stored = on_stored  # told of every segment the store confirmed (the writer's digest log)
        self.store = store
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.failing = False
        self.uploaded = 0
        self.failures = 0
        self.latencies: list[float] = []  # seconds from "sealed and queued" to "store confirmed", recent ones
        self.on_uploaded: list[Callable[[float], None]] = []  # called with each latency (metrics histograms)
        self._clock = clock
        self._rand = rand
        self._task: asyncio.Task[None] | None = None
        self._queued_at: dict[tuple[str, str, int], float] = {}
        # Held while shipping: a segment in flight is never abandoned half-way (a cancelled thread would go on).
        self._shipping = asyncio.Lock()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="uploader")

    async def _run(self) -> None:
        attempt = 0
        while True:
            if not self.spool.ready:
                self.spool.changed.clear()
                await self.spool.changed.wait()
            if await self.ship_once():
                attempt = 0
                continue
            attempt += 1
            # Full jitter: sleep a random time up to the exponential ceiling.
            ceiling = min(self.max_backoff, self.backoff * 2 ** min(attempt, 20))
            await asyncio.sleep(ceiling * self._rand())

    async def ship_once(self) -> bool:
        """Ship every ready segment, oldest first; False as soon as the store refuses one (it stays queued)."""
        async with self._shipping:
            return await self._ship()

    async def _ship(self) -> bool:
        while self.spool.ready:
            items = list(itertools.islice(self.spool.ready, _BATCH))
            for item in items:
                self._queued_at.setdefault((item.session, item.writer, item.number), self._clock())
            stored: list[Sealed] = []
            segments, n, error = await self._load_and_put(items)
            for segment in segments[:n]:
                if self.on_stored is not None:
                    await self.on_stored(segment)
                stored.append(items[len(stored)])
            if stored:
                await self.spool.shipped_many(stored)
                self._count(stored)
            if error is not None:
                self.failures += 1
                if not self.failing:
                    log.error("recording store failing, segments stay in the spool: %s", error)
                self.failing = True
                return False
        return True

    async def _load_and_put(self, items: list[Sealed]) -> tuple[list[Segment], int, Exception | None]:
        """The first of ``items`` (up to a few MiB) read from the spool and stored in order: the segments read, how
        many were stored and the error that stopped the rest. A file store takes both in one thread hop."""
        store = self.store
        if isinstance(store, BlockingBatchStore):
            return await asyncio.to_thread(_load_and_put_blocking, store, items)
        try:
            segments = await self.spool.load_many(items)
        except (StoreError, OSError) as e:
            return [], 0, e
        n, error = await self._put(segments)
        return segments, n, error

    async def _put(self, segments: list[Segment]) -> tuple[int, Exception | None]:
        """Store ``segments`` in order: how many were stored, and the error that stopped the rest."""
        if isinstance(self.store, BatchStore):
            return await self.store.put_segments(segments)
        return await put_each(self.store, segments)

    def _count(self, stored: list[Sealed]) -> None:
        for item in stored:
            self.spool.ready.popleft()
            queued = self._queued_at.pop((item.session, item.writer, item.number), self._clock())
            self.uploaded += 1
            self.latencies = [*self.latencies[-999:], self._clock() - queued]
            for observe in self.on_uploaded:
                observe(self.latencies[-1])
        if self.failing:
            log.info("recording store recovered; spool at %d bytes", self.spool.size)
        self.failing = False

    def summary(self) -> str:
        """For the shutdown log line: segments shipped and their upload latency."""
        lat = sorted(self.latencies) or [0.0]
        return (
            f"uploaded_segments={self.uploaded} upload_latency_ms_p50={lat[len(lat) // 2] * 1000:.1f} "
            f"upload_latency_ms_p95={lat[int(len(lat) * 0.95)] * 1000:.1f} upload_latency_ms_max={lat[-1] * 1000:.1f}"
        )

    async def drain(self, within: float) -> bool:
        """Ship everything now (shutdown): retry with backoff until ``within`` seconds passed. True if empty."""
        deadline = self._clock() + within
        attempt = 0
        while not await self.ship_once():
            attempt += 1
            left = deadline - self._clock()
            if left <= 0:
                return False
            await asyncio.sleep(min(left, self.backoff * 2 ** min(attempt, 6) * self._rand()))
        return True

    async def stop(self) -> None:
        if self._task is not None:
            async with self._shipping:  # only ever cancelled while waiting, never mid-upload
                self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None


def _load_and_put_blocking(
    store: BlockingBatchStore, items: list[Sealed]
) -> tuple[list[Segment], int, Exception | None]:
    try:
        segments = read_segments(items, 4 << 20)
    except OSError as e:
        return [], 0, e
    n, error = store.put_segments_blocking(segments)
    return segments, n, error
