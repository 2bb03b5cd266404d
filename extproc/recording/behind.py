"""Disk work behind the data path: seals and fsyncs of the spool, in order, batched into one thread hop per batch.

Commit points wait only for appends (``Spool.write_behind``, on the event loop); what makes a segment finished
(its data fsynced, its manifest written atomically) and the periodic fsync follow here, so an exchange never waits
for an fsync. Jobs run strictly in the order they were queued, one batch per thread hop. A failing job stays at
the head of the queue with everything after it and is retried every ``retry`` seconds; ``failure`` says why
meanwhile (the recorder reports itself unhealthy: new exchanges are refused).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

from extproc.errors import StoreError
from extproc.tasks import cancel

DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
# Why the recording refuses new exchanges, as the reason label of mcp_extproc_recording_unavailable: the spool's
# disk is full (ENOSPC, EDQUOT), refuses writes otherwise (EACCES, EROFS, EIO...), the spool reached
# recording.spool_max_bytes, or did so because the store refuses segments.
UNAVAILABLE_REASONS = ("disk_full", "spool_unwritable", "spool_full", "store_refusing")


class SpoolWriteError(StoreError):
    """The spool's disk refused an operation: the errno and the path are kept for the operator (log, metric,
    doctor); the client still reads only "recording unavailable"."""

    def __init__(self, what: str, e: OSError) -> None:
        self.errno = e.errno or 0
        name = errno.errorcode.get(self.errno, "")
        super().__init__(f"{what}: {e.strerror or e}" + (f" ({name})" if name else ""))

    @property
    def reason(self) -> str:
        """The ``reason`` label of mcp_extproc_recording_unavailable."""
        return "disk_full" if self.errno in DISK_FULL else "spool_unwritable"


log = logging.getLogger(__name__)


@dataclass(slots=True)
class Job:
    """One piece of blocking disk work. ``run`` is called in a worker thread; ``done`` back on the event loop."""

    run: Callable[[], None]
    done: Callable[[], None] | None = None
    what: str = ""


class DiskWorker:
    """A FIFO of blocking jobs run in batches by one task; ``settled`` waits until the queue is empty."""

    def __init__(self, retry: float = 0.2) -> None:
        self.retry = retry
        self.failure: StoreError | None = None
        self.batches = 0  # thread hops taken (for tests and benchmarks)
        self.completed = 0  # jobs done (a shutdown waits while this moves)
        self._jobs: list[Job] = []
        self._task: asyncio.Task[None] | None = None
        self._kick: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None

    @property
    def pending(self) -> int:
        return len(self._jobs)

    def put(self, job: Job) -> None:
        """Queue ``job`` after every job queued before it; the worker picks it up with the next batch."""
        self._jobs.append(job)
        if self._task is None:
            self._kick, self._idle = asyncio.Event(), asyncio.Event()
            self._task = asyncio.create_task(self._run(), name="spool-disk")
        assert self._kick is not None and self._idle is not None
        self._idle.clear()
        self._kick.set()

    async def settled(self, within: float | None = None) -> StoreError | None:
        """Wait until every queued job is done, or the queue fails (then return why); ``within``: at most so long."""
        loop = asyncio.get_running_loop()
        deadline = None if within is None else loop.time() + within
        while self._jobs and self.failure is None and self._idle is not None:
            timeout = None if deadline is None else max(0.0, deadline - loop.time())
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except TimeoutError:
                return StoreError(f"spool work not done within {within:g}s ({len(self._jobs)} jobs queued)")
        return self.failure

    async def _run(self) -> None:
        assert self._kick is not None and self._idle is not None
        while True:
            if not self._jobs:
                self._idle.set()
                await self._kick.wait()
            self._kick.clear()
            jobs = list(self._jobs)
            done, error = await asyncio.to_thread(_run_jobs, jobs)
            self.batches += 1
            self.completed += done
            del self._jobs[:done]
            for job in jobs[:done]:
                if job.done is not None:
                    job.done()
            if error is None:
                if self.failure is not None:
                    log.info("spool disk work recovered")
                self.failure = None
                continue
            if self.failure is None:
                log.error("spool disk work failing (retried every %gs): %s", self.retry, error)
            self.failure = error
            self._idle.set()  # wake ``settled``: it reports the failure
            await asyncio.sleep(self.retry)
            self._idle.clear()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)


def _run_jobs(jobs: list[Job]) -> tuple[int, StoreError | None]:
    for i, job in enumerate(jobs):
        try:
            job.run()
        except OSError as e:
            return i, SpoolWriteError(job.what, e)
    return len(jobs), None


def fsync_all(files: list[IO[bytes]]) -> None:
    """fsync each file (a file closed since is skipped: it was fsynced when it was closed)."""
    for f in files:
        try:
            fd = f.fileno()
        except ValueError:
            continue
        os.fsync(fd)
