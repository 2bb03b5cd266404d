"""Processor variants for ``gateway_bench.py --variants``: loaded by every Python process started with this folder
on PYTHONPATH, acting only where ``MCP_BENCH_VARIANT`` is set (the bench sets both for processor processes only).

The spec is a comma-separated list of knobs, applied before the processor serves (nothing in extproc/ changes):

  base                  nothing (the code as it is)
  switch=SECONDS        sys.setswitchinterval(SECONDS) at start (the GIL hand-over interval; Python's default 0.005)
  stream=iter           the stream loop as before s8: ``async for`` over the request iterator and ``yield`` (an
                        async generator) instead of ``await context.read()`` / ``context.write()`` (B and N)
  sync                  N only: the synchronous grpcio server (``grpc.server`` with a thread pool) answering the
                        same CONTINUE replies, one thread per open stream
  opt:NAME=INT          one more grpc server option, e.g. opt:grpc.max_concurrent_streams=100
  turns=DIR             the standard asyncio loop instead of uvloop, counting its turns (``_run_once``) and the
                        callbacks it runs, by name, and the exchanges (streams) served; written at exit to
                        DIR/turns-<pid>.json: what wakes the loop per exchange
  linger=SECONDS        the recorder writer's linger (``Recorder.linger``, 0.005: how long a round gathers events)
  rec:KEY=VALUE         (read by gateway_bench, not here) a recording: key of the rows' gateway.yaml
  unix                  (read by gateway_bench, not here) Envoy reaches the processor over a Unix socket, not TCP
"""

from __future__ import annotations

import os
import sys

SPEC = os.environ.get("MCP_BENCH_VARIANT", "")
EXTRA_OPTIONS: list[tuple[str, int]] = []


def _apply(spec: str) -> None:
    knobs = [k.strip() for k in spec.split(",") if k.strip() and k.strip() != "base"]
    for knob in knobs:
        if knob.startswith("switch="):
            sys.setswitchinterval(float(knob.split("=", 1)[1]))
        elif knob.startswith("opt:"):
            name, value = knob[4:].split("=", 1)
            EXTRA_OPTIONS.append((name, int(value)))
    if not knobs:
        return
    import grpc
    import grpc.aio

    if EXTRA_OPTIONS:
        aio_server = grpc.aio.server

        def with_options(*args, options=(), **kwargs):  # type: ignore[no-untyped-def]
            return aio_server(*args, options=[*options, *EXTRA_OPTIONS], **kwargs)

        grpc.aio.server = with_options
    from extproc import server

    if "stream=iter" in knobs:
        _iterate(server)
    if "sync" in knobs:
        _sync_passthrough(server)
    for knob in knobs:
        if knob.startswith("turns="):
            _count_turns(server, knob.split("=", 1)[1])
        elif knob.startswith("linger="):
            _linger(float(knob.split("=", 1)[1]))


def _linger(seconds: float) -> None:
    from extproc.recording.recorder import Recorder

    init = Recorder.__init__

    def with_linger(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        init(self, *args, **kwargs)
        self.linger = seconds

    Recorder.__init__ = with_linger


def _count_turns(server, folder):  # type: ignore[no-untyped-def]
    import asyncio
    import atexit
    import collections
    import inspect
    import json
    import time

    import uvloop

    uvloop.EventLoopPolicy = asyncio.DefaultEventLoopPolicy  # serve.py installs "uvloop": the counted loop instead
    counts = {"turns": 0, "streams": 0}
    callbacks: collections.Counter[str] = collections.Counter()
    seconds: collections.Counter[str] = collections.Counter()  # time spent in each kind of callback
    longest: collections.Counter[str] = collections.Counter()  # the longest single run of each kind
    run_once = asyncio.base_events.BaseEventLoop._run_once
    handle_run = asyncio.events.Handle._run

    def counted_run_once(self):  # type: ignore[no-untyped-def]
        counts["turns"] += 1
        return run_once(self)

    def counted_run(self):  # type: ignore[no-untyped-def]
        cb = self._callback
        owner = getattr(cb, "__self__", None)
        if isinstance(owner, asyncio.Task):
            name = f"task step: {owner.get_coro().__qualname__}"
        else:
            name = getattr(cb, "__qualname__", type(cb).__name__)
        callbacks[name] += 1
        t0 = time.perf_counter()
        try:
            return handle_run(self)
        finally:
            took = time.perf_counter() - t0
            seconds[name] += took
            if took > longest[name]:
                longest[name] = took

    asyncio.base_events.BaseEventLoop._run_once = counted_run_once
    asyncio.events.Handle._run = counted_run
    for cls in (server.Processor, server.PassThrough):  # grpc.aio picks its path by the kind of function: keep it
        process = cls.Process
        if inspect.isasyncgenfunction(process):

            async def wrapped(self, request_iterator, context, process=process):  # type: ignore[no-untyped-def]
                counts["streams"] += 1
                async for reply in process(self, request_iterator, context):
                    yield reply
        else:

            async def wrapped(self, request_iterator, context, process=process):  # type: ignore[no-untyped-def]
                counts["streams"] += 1
                await process(self, request_iterator, context)

        cls.Process = wrapped

    def dump() -> None:
        out = {
            **counts,
            "callbacks": dict(callbacks.most_common(40)),
            "ms": {k: round(v * 1000, 3) for k, v in seconds.most_common(40)},
            "longest_ms": {k: round(v * 1000, 3) for k, v in longest.most_common(40)},
        }
        with open(f"{folder}/turns-{os.getpid()}.json", "w") as f:
            json.dump(out, f, indent=1)

    atexit.register(dump)


def _iterate(server):  # type: ignore[no-untyped-def]
    """The stream loop as it was before the reader-writer API: ``async for`` over the request iterator, ``yield``."""
    import asyncio
    import logging
    from time import perf_counter

    import grpc

    log = logging.getLogger("extproc.server")

    async def process(self, request_iterator, context):  # type: ignore[no-untyped-def]
        ex = server.Exchange(self.gw)
        self.gw.metrics.active.inc()
        outcome, detail = "reset", "stream closed before the exchange ended"
        try:
            async for req in request_iterator:
                phase = req.WhichOneof("request")
                t0 = perf_counter()
                if phase == "request_headers":
                    reply = await ex.on_request_headers(req.request_headers, req.attributes)
                elif phase == "request_body":
                    reply = await ex.on_request_body(req.request_body)
                elif phase == "response_headers":
                    reply = await ex.on_response_headers(req.response_headers)
                elif phase == "response_body":
                    reply = await ex.on_response_body(req.response_body)
                else:
                    reply = server._passthrough(phase)
                if ex.refused:
                    await ex.commit_refusal()
                self.gw.metrics.message(phase, perf_counter() - t0)
                yield reply
            outcome, detail = ("complete", "") if ex.finished else (outcome, detail)
        except asyncio.CancelledError:
            outcome, detail = "reset", "client or Envoy cancelled the stream"
            raise
        except Exception as e:
            outcome, detail = "error", type(e).__name__
            log.exception("exchange %s failed; aborting stream", ex.id)
            await context.abort(grpc.StatusCode.INTERNAL, f"mcp-extproc internal error (exchange {ex.id})")
        finally:
            self.gw.metrics.active.dec()
            ex.finish(outcome, detail)

    async def passthrough(self, request_iterator, context):  # type: ignore[no-untyped-def]
        async for req in request_iterator:
            phase = req.WhichOneof("request")
            yield self._CONTINUE.get(phase) or server._passthrough(phase)

    server.Processor.Process = process
    server.PassThrough.Process = passthrough


def _sync_passthrough(server):  # type: ignore[no-untyped-def]
    import asyncio
    import signal
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc

    full = server.serve

    class SyncPassThrough:
        _CONTINUE = server.PassThrough._CONTINUE

        def Process(self, request_iterator, context):  # type: ignore[no-untyped-def]
            for req in request_iterator:
                phase = req.WhichOneof("request")
                yield self._CONTINUE.get(phase) or server._passthrough(phase)

    async def serve(settings, worker=0, ready=None, passthrough=False):  # type: ignore[no-untyped-def]
        if not passthrough:
            return await full(settings, worker, ready, passthrough)
        options = [("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0), *EXTRA_OPTIONS]
        grpc_server = grpc.server(ThreadPoolExecutor(max_workers=64), options=options)
        server.ep_grpc.add_ExternalProcessorServicer_to_server(SyncPassThrough(), grpc_server)
        checks = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(checks, grpc_server)
        grpc_server.add_insecure_port(server.listen_address(settings, worker))
        grpc_server.start()
        for name in ("", server.SERVICE):
            checks.set(name, health_pb2.HealthCheckResponse.SERVING)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server._settle_heap()
        if ready is not None:
            ready.set()
        await stop.wait()
        grpc_server.stop(5).wait()

    server.serve = serve


if SPEC:
    _apply(SPEC)
