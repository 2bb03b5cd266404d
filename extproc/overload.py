"""Load shedding: when a worker's event loop falls behind, new exchanges get a quick 503 instead of a timeout.

Every message of every exchange of a worker goes through one event loop. Past its capacity, messages queue and
wait longer and longer, until Envoy gives up on one after its ext_proc ``message_timeout`` and the client gets a
504 in the middle of an exchange. The loop's lag (how late a short sleep wakes up) shows this before it happens.
Above ``limits.shed_lag_ms`` new exchanges are refused at admission with 503 and ``Retry-After``; exchanges
already admitted go on, and get the loop back. The lag is sampled only while exchanges arrive: an idle worker
runs no timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from extproc.tasks import cancel

log = logging.getLogger(__name__)


class LagMonitor:
    """How far behind the event loop runs, sampled every ``interval`` seconds while there is traffic."""

    def __init__(self, threshold: float, interval: float = 0.1, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold  # seconds of lag from which new exchanges are refused; 0: never
        self.interval = interval
        self.lag = 0.0  # the latest reading; a sample below it halves it (one slow wake-up fades quickly)
        self.shed = 0  # exchanges refused so far
        self._clock = clock
        self._last_busy = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def overloaded(self) -> bool:
        return self.threshold > 0 and self.lag >= self.threshold

    def busy(self) -> None:
        """An exchange arrived: sample the loop from now on (until a second without any)."""
        if self.threshold <= 0:
            return
        self._last_busy = self._clock()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._sample(), name="lag-monitor")

    async def _sample(self) -> None:
        while self._clock() - self._last_busy < 1.0:
            t0 = self._clock()
            await asyncio.sleep(self.interval)
            lag = max(0.0, self._clock() - t0 - self.interval)
            was = self.overloaded
            self.lag = lag if lag >= self.lag else max(lag, self.lag / 2)
            if self.overloaded != was:
                (log.warning if self.overloaded else log.info)(
                    "worker %s: event loop lag %.0f ms (limits.shed_lag_ms %.0f)",
                    "overloaded, refusing new exchanges" if self.overloaded else "recovered",
                    self.lag * 1000,
                    self.threshold * 1000,
                )
        self.lag = 0.0

    async def stop(self) -> None:
        await cancel(self._task)
