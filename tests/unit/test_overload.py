"""Load shedding: a worker whose event loop falls behind refuses new exchanges at once (503) instead of queueing
them into Envoy's ext_proc timeout."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from exchange_fakes import ALICE, KEY, SCOPE, FakeSink, _gateway, _request, _status, load_fake_policy

from extproc.authn.session_binding import bind
from extproc.exchange import Exchange
from extproc.overload import LagMonitor


async def test_a_blocked_loop_is_seen_as_lag_and_the_lag_fades_once_it_runs_again() -> None:
    monitor = LagMonitor(threshold=0.2, interval=0.02)
    monitor.busy()
    await asyncio.sleep(0.05)
    time.sleep(0.4)  # the loop is stuck, as when it has more messages than it can handle
    for _ in range(3):  # the sampler's wake-up is due: let it run once
        await asyncio.sleep(0)
    assert monitor.overloaded and monitor.lag >= 0.3
    for _ in range(50):  # running freely again: each good sample halves the reading
        monitor.busy()
        await asyncio.sleep(0.02)
        if not monitor.overloaded:
            break
    assert not monitor.overloaded
    await monitor.stop()


async def test_no_traffic_no_sampling() -> None:
    monitor = LagMonitor(threshold=0.2, interval=0.01)
    monitor.busy()
    await asyncio.sleep(1.2)  # a second without exchanges: the sampler stops by itself
    assert monitor._task is not None and monitor._task.done()
    assert LagMonitor(threshold=0).overloaded is False  # 0: shedding off
    LagMonitor(threshold=0).busy()  # and no task started


async def test_an_overloaded_worker_refuses_new_exchanges_quickly_and_records_nothing(tmp_path: Path) -> None:
    sink = FakeSink()
    gw = _gateway(sink, load_fake_policy(tmp_path))
    gw.overload = LagMonitor(threshold=0.5)
    gw.overload.lag = 0.8  # what the sampler reads with the loop 800 ms behind
    reply = await Exchange(gw).on_request_headers(_request(session=bind("s", ALICE, KEY, SCOPE)))
    assert _status(reply) == 503
    headers = {h.header.key: h.header.raw_value for h in reply.immediate_response.headers.set_headers}
    assert headers["retry-after"] == b"1"
    assert b"gateway overloaded" in reply.immediate_response.body
    assert sink.events == [] and gw.overload.shed == 1
    await gw.overload.stop()
