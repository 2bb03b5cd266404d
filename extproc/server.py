"""grpc.aio ExternalProcessor: receive, dispatch to the exchange, send. Nothing else lives here.

A stream must never end cleanly before its exchange is done: Envoy treats a clean close as "carry on
without the processor", which would let traffic pass unrecorded. Any internal error aborts the stream
with a gRPC error instead, and Envoy (failure_mode_allow: false) fails the request.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from time import perf_counter
from typing import Protocol, TypeAlias

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from extproc.authn.verify import Authenticator
from extproc.controls.budgets import Budgets
from extproc.controls.hold import approvals_from_settings
from extproc.envoy import responses
from extproc.envoy.tls import server_credentials
from extproc.exchange import Exchange
from extproc.export.exporter import attach
from extproc.gateway import Gateway
from extproc.kube import sar
from extproc.kube.discovery import start_discovery
from extproc.policy.grants import grant_store
from extproc.policy.loader import PolicyWatcher
from extproc.recording.events import Outcome
from extproc.recording.setup import build_runtime
from extproc.routing import Router
from extproc.settings import Settings
from extproc.telemetry.tracing import Tracing
from extproc.tools.guardrail import Guardrails
from extproc.tools.surface import build_surface
from extproc.upstream.credentials import Upstream

log = logging.getLogger(__name__)
EOF = grpc.aio.EOF  # what context.read() returns once Envoy has half-closed the stream
SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"


Context: TypeAlias = grpc.aio.ServicerContext[ep.ProcessingRequest, ep.ProcessingResponse]


class Servicer(Protocol):
    """What ``add_ExternalProcessorServicer_to_server`` calls: the one streaming method of ext_proc.

    The generated ``ExternalProcessorServicer`` base adds only an UNIMPLEMENTED ``Process`` and is untyped (the
    generated code ships no stubs), so the servicers below implement this Protocol instead of subclassing it.

    ``Process`` is a coroutine on grpc.aio's reader-writer API (``context.read()`` / ``context.write()``), not an
    async generator over ``request_iterator``: grpc.aio reads the iterator through an async generator of its own
    and drives a handler's generator per reply, two coroutine frames and a generator step more per message. Measured in
    alternated rounds: a few µs per message, x0.95-0.99 of CPU per exchange, at the edge of what the shared box
    resolves (bench/README.md, "Transport and latency, s8"). ``request_iterator`` is still passed, and unused."""

    async def Process(self, request_iterator: object, context: Context) -> None: ...


class Processor:
    """The stream loop: one Exchange per stream, one handler per phase."""

    def __init__(self, gw: Gateway) -> None:
        self.gw = gw

    async def Process(self, request_iterator: object, context: Context) -> None:
        ex = Exchange(self.gw)
        self.gw.metrics.active.inc()
        outcome: Outcome = "reset"
        detail = "stream closed before the exchange ended"
        try:
            while (req := await context.read()) is not EOF:
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
                else:  # trailers are not requested (SKIP); answering keeps Envoy moving if config drifts
                    reply = _passthrough(phase)
                if ex.refused:
                    await ex.commit_refusal()
                self.gw.metrics.message(phase, perf_counter() - t0)
                await context.write(reply)
            outcome, detail = ("complete", "") if ex.finished else (outcome, detail)
        except asyncio.CancelledError:
            outcome, detail = "reset", "client or Envoy cancelled the stream"
            raise
        except Exception as e:  # any bug or store failure: fail the request, never pass it unprocessed
            outcome, detail = "error", type(e).__name__
            log.exception("exchange %s failed; aborting stream", ex.id)
            await context.abort(grpc.StatusCode.INTERNAL, f"mcp-extproc internal error (exchange {ex.id})")
        finally:
            self.gw.metrics.active.dec()
            try:
                ex.finish(outcome, detail)
            except Exception:  # never mask the stream's own outcome (cancel, abort) with a recording error
                log.exception("exchange %s: recording its end failed", ex.id)


class PassThrough:
    """CONTINUE to every message, nothing else: the benchmark's baseline for the cost of gRPC itself.

    Never deploy it: it authenticates, authorizes and records nothing (`serve --passthrough`, benchmarks only).
    """

    _CONTINUE = {
        "request_headers": responses.request_headers(),
        "request_body": responses.request_body(),
        "response_headers": responses.response_headers(),
        "response_body": responses.response_body(),
    }

    async def Process(self, request_iterator: object, context: Context) -> None:
        while (req := await context.read()) is not EOF:
            phase = req.WhichOneof("request")
            await context.write(self._CONTINUE.get(phase) or _passthrough(phase))


def _passthrough(phase: str | None) -> ep.ProcessingResponse:
    if phase == "request_trailers":
        return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
    if phase == "response_trailers":
        return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())
    raise ValueError(f"unexpected ext_proc message {phase!r}")


def listen_address(settings: Settings, worker: int = 0) -> str:
    """The gRPC bind address of worker ``worker``."""
    return settings.processor.endpoint(worker)


async def serve(
    settings: Settings, worker: int = 0, ready: asyncio.Event | None = None, passthrough: bool = False
) -> None:
    """Run one processor until SIGTERM/SIGINT; in-flight exchanges finish and recordings are flushed."""
    if passthrough:
        log.warning("--passthrough: NOTHING is authenticated, authorized or recorded (benchmark baseline only)")
        return await _serve_grpc(PassThrough(), listen_address(settings, worker), ready)
    # The policy is loaded first: a bad one is fatal (ConfigError) before anything else starts. Never start open.
    policy = None
    if settings.policy is not None:
        policy = PolicyWatcher(
            settings.policy.directory,
            None if settings.discovery is not None else {s.name for s in settings.servers},  # discovered: unknown
            interval=settings.policy.reload_interval_ms / 1000,
        )
    discovery = await start_discovery(settings)
    recording = build_runtime(settings.recording)
    exporter = None
    tracing: Tracing | None = None
    auth = Authenticator(settings.auth) if settings.auth is not None else None
    upstream = Upstream.from_settings(settings)  # key files read now: a bad one fails the start
    budgets = Budgets.from_config(settings.budgets)
    if worker == 0 and settings.processor.workers > 1 and (settings.budgets is None or not settings.budgets.shared):
        log.warning("budgets: store is local, so policy limits are counted per worker (budgets.store: redis://...)")
    guardrails = Guardrails.from_servers({s.name: s.guardrail for s in settings.servers})  # token files too
    await recording.start()
    try:
        several = settings.processor.workers > 1  # each worker its own export file
        exporter = attach(
            settings.export, recording.recorder.streams, f"worker-{worker}" if several else "", recording.tlog
        )
        if auth is not None:
            await auth.start()  # warms the JWKS cache; an unreachable IdP means 503s until it answers, never open
        else:
            log.warning("allow_anonymous: true — requests are NOT authenticated; never run like this in production")
        if policy is not None:
            await policy.start()
        gw = Gateway.build(settings, recording.recorder, auth, policy, Router(settings, discovery))
        gw.metrics.watch(recording.recorder, policy, auth)
        if exporter is not None:
            gw.metrics.registry.register(exporter.collector())
        gw.reviewer = sar.from_settings(settings.kubernetes)
        gw.grants = grant_store(settings)
        gw.approvals = approvals_from_settings(settings)
        gw.upstream = upstream
        gw.budgets = budgets
        gw.guardrails = guardrails

        gw.surface = build_surface(settings)
        if settings.telemetry is not None and settings.telemetry.endpoint is not None:
            tracing = gw.tracing = Tracing(settings.telemetry)
            gw.metrics.registry.register(tracing.collector())
            log.info("tracing exchanges to %s", settings.telemetry.endpoint)
        log.info("recording as writer %s", recording.recorder.writer_id)
        if settings.processor.metrics_port is not None:
            port = settings.processor.metrics_port + worker
            gw.metrics.serve(settings.processor.metrics_address, port)
            log.info("metrics on http://%s:%d/metrics", settings.processor.metrics_address, port)
        await _serve_grpc(Processor(gw), listen_address(settings, worker), ready, server_credentials(settings))
    finally:  # also when start-up fails half-way (port in use, unreadable key): flush and release the spool
        await recording.close()  # after the last stream ended: everything it recorded is flushed
        if exporter is not None:
            await exporter.close()  # after the recorder: the last exchanges' events are exported too
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # the last spans exported (the SDK's thread joins)
        if auth is not None:
            await auth.close()
        if policy is not None:
            await policy.close()
        if discovery is not None:
            discovery.close()
        if upstream is not None:
            await upstream.close()
        await budgets.close()
        if guardrails is not None:
            await guardrails.close()
    log.info("processor stopped; recordings flushed")


def _settle_heap() -> None:
    """Take what start-up built out of the garbage collector's reach (``gc.freeze``).

    Modules, the compiled policy, clients and their caches live as long as the process: about 120,000 objects that
    every full collection would scan again, on the event loop, while every in-flight exchange waits (a full
    collection took 20-90 ms under load). Frozen, a full collection scans only what exchanges made since. A frozen
    object that later becomes unreachable through a cycle is never freed; start-up objects are replaced rarely
    (a policy reload), so that stays small."""
    gc.collect()
    gc.freeze()


async def _serve_grpc(
    servicer: Servicer,
    address: str,
    ready: asyncio.Event | None,
    credentials: grpc.ServerCredentials | None = None,
) -> None:
    """Serve ext_proc + gRPC health on ``address`` until SIGTERM/SIGINT; then drain in-flight streams (30 s).

    With ``credentials`` (processor.tls) the port takes only TLS clients presenting a certificate of the CA."""
    # so_reuseport off: a port another process holds is a start-up error, never a socket shared with it (the
    # kernel would split Envoy's streams between two processors).
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.so_reuseport", 0)])
    ep_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if address.startswith("unix:") and os.path.exists(address[5:]):  # noqa: ASYNC240 (start-up only)
        os.unlink(address[5:])  # a stale socket from a previous run
    if credentials is not None:
        server.add_secure_port(address, credentials)
    else:
        server.add_insecure_port(address)
    await server.start()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log.info("processor listening on %s (event loop: %s)", address, type(loop).__module__.split(".")[0])
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _settle_heap()
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down: finishing in-flight exchanges")
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    t0 = perf_counter()
    await server.stop(grace=30)
    log.info("in-flight exchanges done in %.1f s", perf_counter() - t0)
