"""Run the audit service: the API (and the web viewer) on uvicorn, the index kept current in the background.

It records like a processor does (its own writer in the same spool root, same store, same signing key), so the
audit trail is a recording like any other, and it completes dead writers' spools like any processor would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from extproc.audit.api import api_routes
from extproc.audit.approvals import approval_routes
from extproc.audit.config import Audit
from extproc.audit.context import AuditContext, client_of, error_response
from extproc.audit.index import SessionIndex
from extproc.audit.index_db import is_url
from extproc.audit.openapi import openapi_document
from extproc.audit.trail import AuditTrail
from extproc.authn.challenge import resource_metadata_url
from extproc.authn.errors import AuthError
from extproc.authn.verify import Authenticator
from extproc.controls.approvals import ApprovalStore
from extproc.export.exporter import attach
from extproc.policy.loader import PolicyWatcher
from extproc.recording.manifest import Signer
from extproc.recording.setup import build_runtime, build_store
from extproc.recording.shred import build_keyring
from extproc.settings import Settings

log = logging.getLogger(__name__)


def index_target(settings: Settings) -> Path | str:
    """The index's SQLite file or PostgreSQL URL."""
    audit = settings.audit or Audit()
    if audit.index is None:
        return settings.recording.directory / ".audit-index.sqlite"
    return audit.index if is_url(audit.index) else Path(audit.index)


# Every answer that is not the viewer's page (which sets its own policy): JSON, NDJSON, SSE, tar.gz, redirects,
# static files. Nothing of it is to be rendered, sniffed into HTML or framed.
NOT_A_PAGE_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
]


class NotAPageHeaders:
    """ASGI middleware: ``nosniff`` and a deny-all CSP on every response that is not HTML."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if not ctype.startswith(b"text/html"):
                    headers += [(k, v) for k, v in NOT_A_PAGE_HEADERS if k not in names]
                elif b"x-content-type-options" not in names:
                    headers.append(NOT_A_PAGE_HEADERS[0])
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def build_app(ctx: AuditContext, prefix: str, extra_routes: list[Route | Mount] | None = None) -> Starlette:
    """The service under ``prefix``: API, OpenAPI document and (when given) the web viewer's routes."""
    document = openapi_document(prefix)
    api_prefix = f"{prefix}api/"

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    async def http_error(request: Request, exc: Exception) -> Response:
        """No such route (or method): a JSON error; under the API, on the trail like any refused access."""
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: "no such path", 405: "method not allowed"}.get(status, "request failed")
        if request.url.path.startswith(api_prefix):
            try:
                who = await ctx.identify(request)
            except AuthError:
                who = None
            result = "not_found" if status == 404 else "bad_request"
            path = request.url.path[:200]
            if not ctx.trail.record(who, client_of(request), "api", path, {}, result, status):
                return error_response(503, "audit trail unavailable: nothing is served unrecorded")
        return error_response(status, message)

    async def crashed(request: Request, exc: Exception) -> Response:
        """A bug outside the API's own handling (the viewer's login routes): JSON, never a bare page. (Answered
        outside the middleware stack, so the headers are set here.)"""
        headers = {k.decode(): v.decode() for k, v in NOT_A_PAGE_HEADERS}
        return error_response(500, "request failed (logged)", headers)

    async def to_prefix(request: Request) -> Response:
        return RedirectResponse(prefix, status_code=308)

    routes = [*api_routes(), *approval_routes(), Route("/api/openapi.json", openapi), *(extra_routes or [])]
    app = Starlette(
        routes=[
            Route(prefix.rstrip("/"), to_prefix),
            Mount(prefix.rstrip("/"), app=Router(routes, redirect_slashes=False)),
        ],
        exception_handlers={HTTPException: http_error, Exception: crashed},
        middleware=[Middleware(NotAPageHeaders)],
    )
    app.state.ctx = ctx
    return app


async def keep_index(index: SessionIndex, interval: float) -> None:
    """Refresh the index from the store forever, while this replica is the indexer (on PostgreSQL one replica is;
    the others try for the role every round and take over when its holder dies); a failing round is retried."""
    while True:
        try:
            n = await asyncio.to_thread(lambda: index.refresh() if index.leads() else 0)
            if n:
                log.debug("index: %d sessions updated", n)
        except Exception:
            log.exception("index refresh failed")
        await asyncio.sleep(interval)


class _Server(uvicorn.Server):
    """uvicorn, but a SIGTERM/SIGINT only asks it to stop.

    uvicorn restores the previous handlers when ``serve`` returns and raises the caught signal again: with the
    default SIGTERM handler back, that kills the process before the trail's last segment and closing digest are
    written (``store verify``: "no closing digest"). ``serve_audit`` handles the signals itself instead, until the
    recorder is closed.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@contextlib.contextmanager
def _stop_on_signals(server: uvicorn.Server) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT (once or again) stop ``server`` gracefully; outside the main thread
    (tests serving in-process) signals are left alone."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()

    def stop() -> None:
        server.should_exit = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    try:
        yield
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


async def serve_audit(settings: Settings, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT; the trail is flushed on the way out."""
    audit, auth_cfg, policy_cfg = settings.audit or Audit(), settings.auth, settings.policy
    if auth_cfg is None or policy_cfg is None:
        raise ValueError("the audit service needs auth and policy in gateway.yaml")
    policy = PolicyWatcher(
        policy_cfg.directory, {s.name for s in settings.servers}, interval=policy_cfg.reload_interval_ms / 1000
    )
    runtime = build_runtime(settings.recording)
    signer = Signer.from_file(settings.recording.signing_key)
    index = SessionIndex(index_target(settings), runtime.store, signer.public)
    authenticator = Authenticator(auth_cfg)
    approvals, keyring = settings.approvals, build_keyring(settings.recording)
    ctx = AuditContext(
        approvals=ApprovalStore(
            approvals.directory, signer, time.time, keyring=keyring, retention=approvals.retention_s()
        )
        if approvals is not None
        else None,
        authenticator=authenticator,
        policy=policy,
        index=index,
        store=runtime.store,
        trail=AuditTrail(runtime.recorder),
        public_key=signer.public,
        metadata_url=resource_metadata_url(auth_cfg),
        keyring=keyring,
    )
    from extproc.audit.web import WebViewer

    web = WebViewer.build(settings, ctx)
    ctx.logins = web.logins
    app = build_app(ctx, audit.prefix, web.routes())
    config = uvicorn.Config(
        app, host=audit.address, port=audit.port, log_level="warning", lifespan="off", proxy_headers=False
    )  # the peer stays the peer; x-forwarded-for is recorded beside it
    server = _Server(config)
    refresher: asyncio.Task[None] | None = None
    with _stop_on_signals(server):  # a signal during start-up or close still ends in a closed trail
        await runtime.start()
        exporter = attach(settings.export, runtime.recorder.streams, "audit")  # the trail's accesses, own file
        try:
            await authenticator.start()
            await policy.start()
            # The first refresh runs in the background too: a large store without an index takes minutes to read,
            # and the service answers (with what is indexed so far) meanwhile.
            refresher = asyncio.create_task(keep_index(index, audit.index_interval_ms / 1000), name="audit-index")
            if ready is not None:
                ready.set()
            log.info("audit service on http://%s:%d%s", audit.address, audit.port, audit.prefix)
            await server.serve()
        finally:
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
            await web.close()
            await runtime.close()  # the trail's last segment and the writer's closing digest
            if exporter is not None:
                await exporter.close()
            await authenticator.close()
            await policy.close()
            index.close()


def reindex(settings: Settings) -> int:
    """Rebuild the index from the store; returns the number of sessions indexed."""
    signer = Signer.from_file(settings.recording.signing_key)
    index = SessionIndex(index_target(settings), build_store(settings.recording), signer.public)
    try:
        return index.reindex()
    finally:
        index.close()
