"""The recorder: a bounded queue in front of the store, batched writes, one hash chain per (session, writer).

``emit`` never blocks the data path: it enqueues or reports that it could not. A single writer task
serializes batches, chains them (each line carries the SHA-256 of the previous line of its file) and
appends them; ``sync`` (fsync) runs on a short interval and whenever an exchange ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from extproc.errors import StoreError
from extproc.recording.events import Event, ExchangeEnd
from extproc.recording.store import Store

log = logging.getLogger(__name__)

GENESIS = "0" * 64
_MAX_BATCH = 512


def new_writer_id() -> str:
    """Unique per processor process: each writer owns its own stream per session, so no file is shared."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def chain_line(seq: int, prev: str, event: dict) -> bytes:
    """One JSON line with its chain fields first; the hash of these exact bytes is the next ``prev``."""
    return json.dumps({"seq": seq, "prev": prev, **event}, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(slots=True)
class _Chain:
    seq: int = 0
    prev: str = GENESIS


class Recorder:
    """Queue -> batch -> chain -> store. ``healthy`` is False while the store is failing."""

    def __init__(
        self,
        store: Store,
        *,
        writer_id: str | None = None,
        queue_size: int = 10_000,
        flush_interval: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.writer_id = writer_id or new_writer_id()
        self.flush_interval = flush_interval
        self.healthy = True
        self.lost_events = 0
        self.written_events = 0
        self._queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=queue_size)
        self._chains: dict[str, _Chain] = {}
        self._pending: dict[str, list[bytes]] = {}  # serialized, chained, not yet appended (store failing)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._synced = asyncio.Event()

    @property
    def accepting(self) -> bool:
        """Whether a new exchange can be recorded now (store healthy and queue not full)."""
        return self.healthy and not self._queue.full()

    def emit(self, event: Event) -> bool:
        """Enqueue without blocking; False (and counted) when the queue is full."""
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.lost_events += 1
            return False
        return True

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="recorder")

    async def close(self) -> None:
        """Drain the queue, write and sync everything, stop the writer task."""
        if self._task is None:
            return
        await self._queue.put(_STOP)
        await self._task
        self._task = None

    async def flushed(self, within: float = 5.0) -> None:
        """Wait until everything emitted so far has been written and synced (for tests and shutdown)."""
        self._synced.clear()
        if self._queue.empty() and not self._pending:
            return
        await asyncio.wait_for(self._synced.wait(), within)

    async def _run(self) -> None:
        last_sync = last_write = self._clock()
        dirty = False
        stopping = False
        while not stopping:
            if self._pending:  # the store failed: retry once per interval, not in a tight loop
                timeout: float | None = max(0.0, self.flush_interval - (self._clock() - last_write))
            elif dirty:
                timeout = max(0.0, self.flush_interval - (self._clock() - last_sync))
            else:
                timeout = None
            try:
                first = await asyncio.wait_for(self._queue.get(), timeout)
            except TimeoutError:
                first = None
            batch: list[Event] = []
            if first is not None:
                batch.append(first)
                while len(batch) < _MAX_BATCH and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
            if any(e is _STOP for e in batch):
                stopping = True
                batch = [e for e in batch if e is not _STOP]
            self._chain(batch)
            ended = any(isinstance(e, ExchangeEnd) for e in batch)
            dirty = await self._write() or dirty
            last_write = self._clock()
            if dirty and (ended or stopping or self._clock() - last_sync >= self.flush_interval):
                dirty = not await self._sync()
                last_sync = self._clock()
            if not dirty and not self._pending and self._queue.empty():
                self._synced.set()
        if self._pending:  # the store is still failing at shutdown: say exactly what could not be written
            lost = sum(len(lines) for lines in self._pending.values())
            self.lost_events += lost
            log.error(
                "recording store failing at shutdown: %d events of %d sessions not written", lost, len(self._pending)
            )

    def _chain(self, events: list[Event]) -> None:
        for e in events:
            chain = self._chains.setdefault(e.session, _Chain())
            line = chain_line(chain.seq, chain.prev, e.to_dict())
            chain.seq += 1
            chain.prev = hashlib.sha256(line).hexdigest()
            self._pending.setdefault(e.session, []).append(line + b"\n")

    async def _write(self) -> bool:
        """Append pending lines per session; on failure keep them for the next round. True if anything written."""
        wrote = False
        for session in list(self._pending):
            lines = self._pending[session]
            try:
                await self.store.append(session, self.writer_id, b"".join(lines))
            except StoreError as e:
                self._set_health(False, str(e))
                return wrote
            del self._pending[session]
            self.written_events += len(lines)
            wrote = True
        return wrote

    async def _sync(self) -> bool:
        try:
            await self.store.sync()
        except StoreError as e:
            self._set_health(False, str(e))
            return False
        self._set_health(True)  # healthy again only once data is durable, not merely appended
        return True

    def _set_health(self, ok: bool, why: str = "") -> None:
        if ok != self.healthy:
            (log.info if ok else log.error)("recording store %s%s", "recovered" if ok else "failing: ", why)
        self.healthy = ok


class _Stop(Event):
    type = "stop"


_STOP = _Stop()
