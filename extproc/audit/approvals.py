"""The audit API's approvals: list held calls, approve or deny one (extproc/controls/approvals.py keeps them).

Who sees a request: the viewer rules, as for recordings (a rule covering its server; ``sessions: own`` shows only
one's own calls). Who decides: someone the holding rule's ``approvers`` match under the policy version the call
was held with, never the caller. A web viewer login (cookie) must send its CSRF token (``x-csrf-token``), as for
logout. Every answer, refusals included, is on the audit trail (``audited``), with the reason given.
"""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from extproc.audit.api import audited
from extproc.audit.context import ApiError, AuditContext
from extproc.authn.principal import Principal
from extproc.controls.approval_files import Entry
from extproc.controls.approval_files import Request as HeldCall
from extproc.controls.approvals import ApprovalError, ApprovalStore
from extproc.policy.engine import subjects_miss

STATES = ("pending", "approved", "denied", "expired", "used", "all")


def _store(ctx: AuditContext) -> ApprovalStore:
    if ctx.approvals is None:
        raise ApiError(404, "approvals are not configured (gateway.yaml: approvals)", "not_found")
    return ctx.approvals


def _visible(ctx: AuditContext, who: Principal, e: Entry) -> bool:
    r = e.request
    return any(
        (g.servers is None or r.server in g.servers)
        and (g.all_sessions or (r.issuer, r.subject) == (who.issuer, who.subject))
        for g in ctx.grants(who)
    )


def may_approve(ctx: AuditContext, who: Principal, r: HeldCall) -> str | None:
    """None when ``who`` is one of the approvers of the rule that held ``r``, under the same policy version."""
    policy = ctx.policy.current
    if policy.fingerprint != r.policy_version:
        return "the policy changed since this call was held; the caller retries to ask again under the new policy"
    rule = next((x for x in policy.rules if x.name == r.rule), None)
    if rule is None or rule.approval is None:
        return f"rule {r.rule!r} no longer holds calls for approval"
    if subjects_miss(rule.approval.approvers, who) is not None:
        return f"not one of the approvers of rule {r.rule!r} ({rule.approval.text})"
    return None


def _doc(ctx: AuditContext, who: Principal, e: Entry, now: float) -> dict[str, object]:
    own = (e.request.issuer, e.request.subject) == (who.issuer, who.subject)
    can = not own and e.state(now) == "pending" and may_approve(ctx, who, e.request) is None
    return {**e.to_json(now), "may_decide": can}


@audited("approvals", ("state",))
async def list_approvals(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """Held calls the caller may see (``state``: pending by default, or approved, denied, expired, used, all)."""
    state = request.query_params.get("state", "pending")
    if state not in STATES:
        raise ApiError(400, f"state: expected one of {', '.join(STATES)}", "bad_request")
    store = _store(ctx)
    entries = await asyncio.to_thread(store.entries)
    now = store.clock()
    shown = [e for e in entries if _visible(ctx, who, e) and (state == "all" or e.state(now) == state)]
    return JSONResponse({"approvals": [_doc(ctx, who, e, now) for e in shown]})


@audited("approval")
async def show_approval(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """One held call (404 when it does not exist or is not the caller's to see)."""
    store = _store(ctx)
    e = await asyncio.to_thread(store.entry, request.path_params["key"])
    if e is None or not _visible(ctx, who, e):
        raise ApiError(404, "no such approval request", "not_found")
    return JSONResponse(_doc(ctx, who, e, store.clock()))


async def _decide(ctx: AuditContext, request: Request, who: Principal, approve: bool) -> Response:
    if "authorization" not in request.headers:  # a cookie login: a cross-site form must not decide for it
        check = getattr(ctx.logins, "check_csrf", None)
        if check is None or not check(request):
            raise ApiError(403, "missing or wrong CSRF token (x-csrf-token)", "forbidden")
    store = _store(ctx)
    key = request.path_params["key"]
    e = await asyncio.to_thread(store.entry, key)
    if e is None or not _visible(ctx, who, e):
        raise ApiError(404, "no such approval request", "not_found")
    reason = request.query_params.get("reason", "")
    try:
        decided = await asyncio.to_thread(store.decide, key, who, approve, reason, lambda r: may_approve(ctx, who, r))
    except ApprovalError as err:
        result = {403: "forbidden", 404: "not_found", 409: "conflict"}.get(err.status, "bad_request")
        raise ApiError(err.status, err.message, result) from None
    return JSONResponse(_doc(ctx, who, decided, store.clock()))


@audited("approve", ("reason",))
async def approve(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """Approve a pending call: its identical retry passes (``count`` times) until the approval expires."""
    return await _decide(ctx, request, who, True)


@audited("deny", ("reason",))
async def deny(ctx: AuditContext, request: Request, who: Principal) -> Response:
    """Deny a pending call (``reason`` required): its retries are held again, under a new request."""
    return await _decide(ctx, request, who, False)


def approval_routes() -> list[Route]:
    return [
        Route("/api/approvals", list_approvals),
        Route("/api/approvals/{key}", show_approval),
        Route("/api/approvals/{key}/approve", approve, methods=["POST"]),
        Route("/api/approvals/{key}/deny", deny, methods=["POST"]),
    ]
