"""The audit API (JSON; errors as JSON). Every access to recordings goes through ``audited``: identify, authorize,
answer, and put the access on the audit trail before a byte of the answer leaves."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import re
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from extproc.audit.context import (
    ApiError,
    AuditContext,
    auth_error_response,
    client_of,
    error_response,
    json_default,
    not_found,
)
from extproc.audit.index import MAX_LIMIT, STATES, BadQuery, Filters, allowed
from extproc.audit.summary import SessionRow, summarize
from extproc.authn.errors import AuthError
from extproc.authn.principal import Principal
from extproc.recording.replay import Session, load_session
from extproc.recording.report import session_doc
from extproc.recording.store import safe_key
from extproc.timespec import parse_time

log = logging.getLogger(__name__)

Handler = Callable[[AuditContext, Request, Principal], Awaitable[Response]]
LIST_PARAMS = ("server", "user", "since", "until", "state", "tool", "limit", "cursor")
REPLAY_PARAMS = ("speed", "start")


def audited(
    action: str, params: tuple[str, ...] = (), record_ok: bool = True
) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Identify the caller, run the handler, record the access (who, what, when, from where, result).

    Every refusal is a JSON error on the trail: bad input 400, unknown or hidden 404, and anything unforeseen a
    500 (logged with its stack) rather than a bare crash. ``record_ok=False``: only refusals are recorded (``me``
    reads no recording).
    """

    def wrap(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            ctx: AuditContext = request.app.state.ctx
            who: Principal | None = None
            target = request.path_params.get("key", "")[:200]
            query = {k: v[:200] for k, v in request.query_params.items() if k in params}
            if not ctx.trail.accepting:  # fail closed: nothing is served that could not be recorded
                return error_response(503, "audit trail unavailable: nothing is served unrecorded")
            try:
                unknown = sorted(set(request.query_params) - set(params))
                who = await ctx.identify(request)
                if unknown:
                    known = ", ".join(params) or "none"
                    raise ApiError(400, f"unknown parameter {unknown[0][:100]!r}; known: {known}", "bad_request")
                response = await handler(ctx, request, who)
                result, status = "ok", response.status_code
            except AuthError as e:
                response, result, status = auth_error_response(e, ctx.metadata_url), "unauthenticated", e.status
            except ApiError as e:
                response, result, status = error_response(e.status, e.message), e.result, e.status
            except BadQuery as e:
                response, result, status = error_response(400, str(e)), "bad_request", 400
            except Exception:  # a bug, not the caller's fault: say so in JSON, keep the stack in the log
                log.exception("audit %s %s failed", action, target)
                response, result, status = error_response(500, "request failed (logged)"), "error", 500
            if result == "ok" and not record_ok:
                return response
            if not ctx.trail.record(who, client_of(request), action, target, query, result, status):
                return error_response(503, "audit trail unavailable: nothing is served unrecorded")
            return response

        endpoint.__name__ = handler.__name__
        endpoint.__doc__ = handler.__doc__
        return endpoint

    return wrap


def _ident(who: Principal) -> tuple[str, str]:
    return who.issuer, who.subject


def _check_key(key: str) -> None:
    if safe_key(key) != key:
        raise ApiError(400, "session must be a recording key as listed (letters, digits, '.', '_', '-')", "bad_request")


async def load_allowed(ctx: AuditContext, who: Principal, key: str) -> tuple[SessionRow, Session]:
    """A session the caller may see, read and verified; 404 (never 403) for one outside the grant."""
    _check_key(key)
    grants = ctx.grants(who)
    row = await asyncio.to_thread(ctx.index.get, key)  # PostgreSQL: a network read
    if row is None or not allowed(grants, _ident(who), row):
        raise not_found()
    try:
        session = await asyncio.to_thread(load_session, ctx.store, key, ctx.public_key, ctx.keyring)
    except KeyError:
        raise not_found() from None
    fresh = summarize(key, session)  # authorize on what the store holds now, not only on the index
    if not allowed(grants, _ident(who), fresh):
        raise not_found()
    return fresh, session


def _text(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if not value or len(value) > 200:
        raise BadQuery(f"{name}: must be 1 to 200 characters")
    return value


def _time(request: Request, name: str) -> float | None:
    """The same forms as the CLI's ``--since`` (one parser: ``extproc.timespec``), ``24h`` included."""
    value = request.query_params.get(name)
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as e:
        raise BadQuery(f"{name}: {e}") from None


def _number(request: Request, name: str, default: float, low: float, high: float) -> float:
    value = request.query_params.get(name)
    if value is None:
        return default
    try:
        n = float(value)
    except ValueError:
        raise BadQuery(f"{name}: expected a number between {low:g} and {high:g}") from None
    if not math.isfinite(n) or not low <= n <= high:
        raise BadQuery(f"{name}: expected a number between {low:g} and {high:g}")
    return n


@audited("list", LIST_PARAMS)
async def list_sessions(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """Sessions the caller may see, newest first, filtered, one page at a time."""
    state = request.query_params.get("state")
    if state is not None and state not in STATES:
        raise BadQuery(f"state: expected one of {', '.join(STATES)}")
    limit_text = request.query_params.get("limit", "50")
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not (limit_text.isascii() and limit_text.isdigit() and len(limit_text) <= 6) or not (
        1 <= int(limit_text) <= MAX_LIMIT
    ):
        raise BadQuery(f"limit: expected a whole number from 1 to {MAX_LIMIT}")
    filters = Filters(
        server=_text(request, "server"),
        user=_text(request, "user"),
        since=_time(request, "since"),
        until=_time(request, "until"),
        state=state,
        tool=_text(request, "tool"),
    )
    cursor = request.query_params.get("cursor")
    rows, next_cursor = await asyncio.to_thread(
        ctx.index.query, ctx.grants(who), _ident(who), filters, cursor, int(limit_text)
    )
    checked = ctx.public_key is not None  # the index verified each session with the configured key, if any
    return JSONResponse(
        {"sessions": [r.to_json() for r in rows], "next_cursor": next_cursor, "signatures_checked": checked}
    )


def _verification(session: Session) -> dict[str, Any]:
    return {
        "ok": not session.problems and not session.unfinished,
        "verified": not session.problems,
        "signatures_checked": False,
        "problems": [str(p) for p in session.problems],
        "unfinished": session.unfinished,
        "notes": session.notes,
        "writers": sorted(session.writers),  # every writer's stream checked (several workers and replicas)
    }


@audited("show")
async def show_session(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """One session: exchanges, paired JSON-RPC calls, decisions, refusals, redactions, verification."""
    row, session = await load_allowed(ctx, who, request.path_params["key"])
    doc = session_doc(session)
    doc["session"] = row.to_json()
    doc["verification"] = {**_verification(session), "signatures_checked": ctx.public_key is not None}
    body = json.dumps(doc, default=json_default, ensure_ascii=False)
    return Response(body, media_type="application/json")


@audited("verify")
async def verify_session(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """Chains, manifests and (with the configured key) signatures: the same findings as ``sessions verify``."""
    row, session = await load_allowed(ctx, who, request.path_params["key"])
    doc = {"session": row.key, **_verification(session), "signatures_checked": ctx.public_key is not None}
    doc["state"] = row.state
    doc["events"] = len(session.events)
    doc["streams"] = len(session.writers)
    doc["capture"] = session.capture()  # the capture level(s) it was recorded at
    return JSONResponse(doc)


def _events(session: Session) -> list[dict[str, Any]]:
    return [{("writer" if k == "_writer" else k): v for k, v in ev.items()} for ev in session.events]


@audited("events")
async def session_events(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """Every stored event, in time order, one JSON document per line."""
    _, session = await load_allowed(ctx, who, request.path_params["key"])
    lines = "".join(json.dumps(ev, default=json_default, ensure_ascii=False) + "\n" for ev in _events(session))
    return Response(lines, media_type="application/x-ndjson")


@audited("export")
async def export_session(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """Segments and signed manifests as stored (a file-store layout), checkable offline with `sessions verify`."""
    key = request.path_params["key"]
    await load_allowed(ctx, who, key)
    streams = await asyncio.to_thread(ctx.store.read_session, key)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for writer, stream in sorted(streams.items()):
            manifests = b"".join(m + b"\n" for m in stream.manifests)
            for name, data in ((f"{writer}.jsonl", stream.data), (f"{writer}.manifests", manifests)):
                info = tarfile.TarInfo(f"{key}/{name}")
                info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
                tar.addfile(info, io.BytesIO(data))
    headers = {"content-disposition": f'attachment; filename="{key}.tar.gz"'}
    return Response(buf.getvalue(), media_type="application/gzip", headers=headers)


@audited("replay", REPLAY_PARAMS)
async def replay_session(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """The events again as server-sent events, at their recorded pace (``speed`` factor, ``start`` offset in s)."""
    speed = _number(request, "speed", 1.0, 0.1, 100.0)
    start = _number(request, "start", 0.0, 0.0, 366 * 86_400.0)
    _, session = await load_allowed(ctx, who, request.path_params["key"])
    events = _events(session)
    return StreamingResponse(
        replay_stream(events, speed, start),
        media_type="text/event-stream",
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


async def replay_stream(
    events: list[dict[str, Any]], speed: float, start: float, clock: Callable[[], float] = time.monotonic
) -> AsyncIterator[bytes]:
    """SSE frames: each event when its recorded offset (minus ``start``, divided by ``speed``) has passed."""
    base = events[0].get("time", 0.0) if events else 0.0
    began = clock()
    for n, ev in enumerate(events):
        offset = float(ev.get("time", base)) - base
        if offset < start:
            continue
        due = began + (offset - start) / speed
        wait = due - clock()
        if wait > 0:
            await asyncio.sleep(wait)
        data = json.dumps({"offset": offset, "event": ev}, default=json_default, ensure_ascii=False)
        yield f"id: {n}\nevent: {ev.get('type', 'event')}\ndata: {data}\n\n".encode()
    yield b"event: end\ndata: {}\n\n"


@audited("me", record_ok=False)
async def me(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """Who the caller is and which viewer rules match (not an access to recordings: on the trail only if refused)."""
    from extproc.audit.authz import grant_names
    from extproc.audit.web import me_extra

    return JSONResponse(
        {
            "username": who.username,
            "subject": who.subject,
            "issuer": who.issuer,
            "groups": list(who.groups),
            "viewer_rules": grant_names(ctx.policy.current, who),
            **me_extra(ctx, request),
        }
    )


# The transparency log, read-only, for witnesses: checkpoints, their RFC 3161 tokens and hash tiles. Entry bundles
# and the per-session index name sessions, so they stay in the store (`mcp-extproc evidence prove` reads them).
_LOG_FILE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}/"
    r"(checkpoint(\.tsr)?|checkpoints/[0-9]{12}(\.tsr)?|tile/[0-9]{1,2}/(x[0-9]{3}/)*[0-9]{3}(\.p/[0-9]{1,3})?)$"
)


@audited("log")
async def log_index(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """The transparency logs (one per writer) that published a checkpoint."""
    from extproc.evidence.proofs import log_keys
    from extproc.evidence.tiles import blobs_for

    try:
        blobs = blobs_for(ctx.store)
    except TypeError:
        return JSONResponse({"logs": []})
    return JSONResponse({"logs": await asyncio.to_thread(log_keys, blobs)})


@audited("log")
async def log_file(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """One checkpoint, timestamp token or hash tile (c2sp.org/tlog-tiles paths under the log's name)."""
    from extproc.evidence.tiles import blobs_for

    path = request.path_params["path"]
    if not _LOG_FILE.match(path):
        raise ApiError(404, "not a checkpoint or hash tile of a log", "not_found")
    try:
        data = await asyncio.to_thread(blobs_for(ctx.store).get, path)
    except TypeError:
        data = None
    if data is None:
        raise ApiError(404, "no such log file", "not_found")
    mutable = path.endswith(("/checkpoint", "/checkpoint.tsr"))
    media = "application/timestamp-reply" if path.endswith(".tsr") else "application/octet-stream"
    if "/tile/" not in path and not path.endswith(".tsr"):
        media = "text/plain; charset=utf-8"
    cache = "no-cache" if mutable else "public, max-age=31536000, immutable"
    return Response(data, media_type=media, headers={"cache-control": cache})


def api_routes() -> list[Route]:
    """The API routes, relative to the service prefix (``openapi.py`` documents exactly these, and the
    approvals' routes, ``extproc.audit.approvals.approval_routes``)."""
    return [
        Route("/api/me", me),
        Route("/api/sessions", list_sessions),
        Route("/api/sessions/{key}", show_session),
        Route("/api/sessions/{key}/events", session_events),
        Route("/api/sessions/{key}/verify", verify_session),
        Route("/api/sessions/{key}/export", export_session),
        Route("/api/sessions/{key}/replay", replay_session),
        Route("/api/log", log_index),
        Route("/api/log/{path:path}", log_file),
    ]
