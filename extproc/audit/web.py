"""The web viewer: static assets shipped in the package, and the login (OIDC Authorization Code + PKCE).

The login (and a started one, until the callback) is sealed into an HttpOnly, SameSite=Lax cookie (Secure when
the public URL is https) with authenticated encryption under a key file the replicas share (``sealed.py``): no
replica holds login state, so any replica answers any request and no sticky routing is needed. State-changing
requests (logout, re-drive) need the login's CSRF token (sealed in the cookie) in the ``x-csrf-token`` header or a
``csrf`` form field. A logout is recorded in the session index until the login would have expired: replicas
sharing the index (PostgreSQL) all refuse the cookie from then on.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from extproc.audit.config import Audit
from extproc.audit.context import AuditContext, client_of, error_response
from extproc.audit.sealed import Sealer
from extproc.authn.config import AuthConfig
from extproc.authn.errors import AuthError
from extproc.authn.principal import Principal
from extproc.authn.verify import Authenticator
from extproc.settings import Settings

log = logging.getLogger(__name__)

SESSION_COOKIE = "mcp_audit"
LOGIN_COOKIE = "mcp_audit_login"
LOGIN_TTL = 600.0
MAX_LOGIN_SECONDS = 8 * 3600.0
# Started logins are sealed into the login cookie too (nothing held per caller, whatever the callers do); ``next``
# is bounded so the cookie stays under a browser's ~4 KB.
MAX_NEXT = 2048
REVOCATION_CHECK_S = 1.0
MAX_CHECKED = 10_000  # revocation answers kept (one per login seen in the last second)


def static_dir() -> Path:
    return Path(str(resources.files("extproc.audit") / "static"))


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass(frozen=True, slots=True)
class _Started:
    """A started login, as sealed into the login cookie until the callback."""

    verifier: str
    nonce: str
    next: str

    @classmethod
    def of(cls, doc: dict[str, Any] | None) -> _Started | None:
        if doc is None:
            return None
        values = (doc.get("verifier"), doc.get("nonce"), doc.get("next"))
        if not all(isinstance(v, str) for v in values):
            return None
        return cls(*values)  # type: ignore[arg-type]


def _same(given: str, expected: str) -> bool:
    """Constant-time equality; as bytes, since ``hmac.compare_digest`` raises on non-ASCII text (a 500)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


class Revocations(Protocol):
    """Where logouts are kept until the login would have expired: shared by the replicas that share it."""

    def revoke_login(self, login_id: str, until: float) -> None: ...

    def login_revoked(self, login_id: str) -> bool: ...


class LocalRevocations:
    """Logouts held in this process only (tests, and a viewer without an index)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._until: dict[str, float] = {}

    def revoke_login(self, login_id: str, until: float) -> None:
        now = self.clock()
        self._until = {k: t for k, t in self._until.items() if t > now}
        self._until[login_id] = until

    def login_revoked(self, login_id: str) -> bool:
        return self._until.get(login_id, 0.0) > self.clock()


# Claims of the ID token that say nothing about who the user is (policy subjects never match on them): left out of
# the sealed cookie to keep it small.
_TRANSIENT_CLAIMS = frozenset({"nonce", "at_hash", "c_hash", "iat", "nbf", "exp", "auth_time", "azp", "sid"})


@dataclass(frozen=True, slots=True)
class _Login:
    principal: Principal
    csrf: str
    login_id: str
    expires: float


def _principal_of(doc: dict[str, Any]) -> Principal | None:
    p = doc.get("p")
    if not isinstance(p, dict):
        return None
    try:
        return Principal(
            issuer=str(p["issuer"]), subject=str(p["subject"]), username=str(p["username"]),
            groups=tuple(str(g) for g in p["groups"]), token_id=str(p["token_id"]), claims=dict(p["claims"]),
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


@dataclass
class Logins:
    """Logins sealed into the session cookie (see ``sealed.py``): any replica holding the key file reads them.

    Nothing is held per login; a logout is remembered in ``revocations`` (the session index, shared by replicas
    that share the index) until the login would have expired anyway."""

    cookie_path: str
    secure: bool
    sealer: Sealer = field(default_factory=Sealer)
    revocations: Revocations = field(default_factory=LocalRevocations)
    clock: Callable[[], float] = time.time
    # A revocation lookup is a database read (over the network on PostgreSQL): kept REVOCATION_CHECK_S, so the
    # lookups of one request (identity, CSRF token) cost one read. A logout elsewhere is seen within that time.
    _checked: dict[str, tuple[float, bool]] = field(default_factory=dict)

    def principal(self, request: Request) -> Principal | None:
        login = self._get(request)
        return login.principal if login else None

    def csrf(self, request: Request) -> str | None:
        login = self._get(request)
        return login.csrf if login else None

    def _get(self, request: Request) -> _Login | None:
        doc = self.sealer.open("login", request.cookies.get(SESSION_COOKIE))
        if doc is None:
            return None
        who, csrf, login_id = _principal_of(doc), doc.get("csrf"), doc.get("id")
        if who is None or not isinstance(csrf, str) or not isinstance(login_id, str):
            return None
        if self._revoked(login_id):
            return None
        return _Login(who, csrf, login_id, float(doc["exp"]))

    def _revoked(self, login_id: str) -> bool:
        now = self.clock()
        hit = self._checked.get(login_id)
        if hit is not None and now - hit[0] < REVOCATION_CHECK_S:
            return hit[1]
        try:
            revoked = self.revocations.login_revoked(login_id)
        except Exception:  # the shared store is away: a logout cannot be checked, so no login is honoured
            log.exception("cannot check login revocations; refusing the cookie login")
            return True
        if len(self._checked) >= MAX_CHECKED:
            self._checked = {k: v for k, v in self._checked.items() if now - v[0] < REVOCATION_CHECK_S}
            if len(self._checked) >= MAX_CHECKED:
                self._checked.clear()
        self._checked[login_id] = (now, revoked)
        return revoked

    def create(self, who: Principal, expires: float) -> str:
        """The cookie value of a new login ending at ``expires`` (the ID token's), at most MAX_LOGIN_SECONDS."""
        ttl = min(expires - self.clock(), MAX_LOGIN_SECONDS)
        claims = {k: v for k, v in who.claims.items() if k not in _TRANSIENT_CLAIMS}
        p = {**who.to_record(), "claims": claims}
        return self.sealer.seal(
            "login", {"p": p, "csrf": secrets.token_urlsafe(24), "id": secrets.token_urlsafe(16)}, ttl
        )

    def end(self, request: Request) -> None:
        login = self._get(request)
        if login is not None:
            self.revocations.revoke_login(login.login_id, login.expires)
            self._checked[login.login_id] = (self.clock(), True)

    def check_csrf(self, request: Request, form_token: str | None = None) -> bool:
        """A state-changing request carries the login's CSRF token (header or form field)."""
        login = self._get(request)
        token = request.headers.get("x-csrf-token") or form_token
        return login is not None and token is not None and _same(token, login.csrf)


class WebViewer:
    """Static UI plus login/callback/logout against the configured issuer."""

    def __init__(self, audit: Audit, auth: AuthConfig, ctx: AuditContext, trace_link: str = "") -> None:
        self.audit = audit
        self.prefix = audit.prefix
        self.ctx = ctx
        self.public_base = auth.public_url.rstrip("/")
        self.sealer = Sealer(audit.login_keys_file)
        self.logins = Logins(
            audit.prefix, auth.public_url.startswith("https://"), self.sealer, ctx.index
        )  # logouts go to the index: replicas sharing it share them
        self._discovery: dict[str, Any] | None = None
        self._http = httpx.AsyncClient(timeout=10)
        issuer = next((i for i in auth.issuers if i.issuer == audit.login_issuer), auth.issuers[0])
        self.issuer = issuer
        self.secret = audit.client_secret_file.read_text().strip() if audit.client_secret_file else None
        page = (static_dir() / "index.html").read_text().replace("{{PREFIX}}", self.prefix)
        # Without a client the viewer shows how to turn login on instead of a Log in link that cannot work.
        self._page = page.replace("{{LOGIN}}", "on" if audit.client_id else "off")
        # telemetry.trace_link: the viewer links an exchange's trace id to the tracing backend (Jaeger, Tempo...).
        self._page = self._page.replace("{{TRACE_LINK}}", html.escape(trace_link, quote=True))
        self.id_tokens: Authenticator | None = None
        if audit.client_id:
            # ID tokens are checked by the gateway's own verifier, with the viewer's client id as the audience.
            login_cfg = auth.model_copy(
                update={"issuers": [issuer.model_copy(update={"audiences": [audit.client_id]})]}
            )
            self.id_tokens = Authenticator(login_cfg)

    @classmethod
    def build(cls, settings: Settings, ctx: AuditContext) -> WebViewer:
        assert settings.auth is not None
        link = settings.telemetry.trace_link if settings.telemetry is not None else None
        return cls(settings.audit or Audit(), settings.auth, ctx, link or "")

    async def close(self) -> None:
        await self._http.aclose()
        if self.id_tokens is not None:
            await self.id_tokens.close()

    @property
    def redirect_uri(self) -> str:
        return f"{self.public_base}{self.prefix}callback"

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", self.page),
            Route("/s/{key}", self.page),
            Route("/approvals", self.page),
            Route("/approvals/{key}", self.page),
            Route("/login", self.login),
            Route("/callback", self.callback),
            Route("/logout", self.logout, methods=["POST"]),
            Mount("/static", StaticFiles(directory=static_dir()), name="static"),
        ]

    async def page(self, request: Request) -> Response:
        headers = {
            "content-security-policy": "default-src 'self'; frame-ancestors 'none'; base-uri 'none'",
            "x-content-type-options": "nosniff",
            "referrer-policy": "no-referrer",
            "cache-control": "no-store",
        }
        return HTMLResponse(self._page, headers=headers)

    async def _endpoints(self) -> dict[str, Any]:
        if self._discovery is None:
            r = await self._http.get(self.issuer.discovery_url)
            r.raise_for_status()
            doc = r.json()
            if doc.get("issuer") != self.issuer.issuer or not doc.get("authorization_endpoint"):
                raise ValueError("discovery document does not describe this issuer's login")
            self._discovery = doc
        return self._discovery

    def _next(self, value: str | None) -> str | None:
        """Where to go after the login: a path under our own prefix (never an open redirect), at most MAX_NEXT
        characters; None for anything else (the caller answers 400)."""
        if value is None:
            return self.prefix
        if 0 < len(value) <= MAX_NEXT and value.startswith(self.prefix) and "//" not in value and "\\" not in value:
            return value
        return None

    async def login(self, request: Request) -> Response:
        if not self.audit.client_id:
            return RedirectResponse(self.prefix, status_code=303)  # the viewer's page says how to turn it on
        next_path = self._next(request.query_params.get("next"))
        if next_path is None:
            return error_response(
                400, f"next: must be a path under {self.prefix} of at most {MAX_NEXT} characters (no '//' or '\\')"
            )
        try:
            endpoints = await self._endpoints()
        except (httpx.HTTPError, ValueError) as e:
            log.warning("login: issuer discovery failed: %s", e)
            return error_response(503, "identity provider unavailable; try again later")
        state, verifier, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(48), secrets.token_urlsafe(16)
        query = {
            "response_type": "code",
            "client_id": self.audit.client_id,
            "redirect_uri": self.redirect_uri,
            "scope": "openid profile",
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        response = RedirectResponse(f"{endpoints['authorization_endpoint']}?{urlencode(query)}", status_code=302)
        started = {"state": state, "verifier": verifier, "nonce": nonce, "next": next_path}
        response.set_cookie(
            LOGIN_COOKIE, self.sealer.seal("started", started, LOGIN_TTL), max_age=int(LOGIN_TTL), path=self.prefix,
            httponly=True, secure=self.logins.secure, samesite="lax",
        )  # fmt: skip
        return response

    async def callback(self, request: Request) -> Response:
        state = request.query_params.get("state", "")
        started = self.sealer.open("started", request.cookies.get(LOGIN_COOKIE))
        bound = started.get("state") if started is not None else None
        pending = _Started.of(started) if isinstance(bound, str) and state and _same(state, bound) else None
        if pending is None or self.id_tokens is None:
            return error_response(400, "login expired or not started in this browser; start again")
        if "code" not in request.query_params:
            why = request.query_params.get("error", "")[:200]
            return error_response(401, f"login refused by the identity provider: {why}")
        form = {
            "grant_type": "authorization_code",
            "code": request.query_params["code"],
            "redirect_uri": self.redirect_uri,
            "client_id": self.audit.client_id or "",
            "code_verifier": pending.verifier,
        }
        if self.secret:
            form["client_secret"] = self.secret
        try:
            r = await self._http.post((await self._endpoints())["token_endpoint"], data=form)
            id_token = r.json().get("id_token") if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            id_token = None
        if not isinstance(id_token, str):
            return error_response(401, "the identity provider did not issue an ID token")
        try:
            who = await self.id_tokens.authenticate(f"Bearer {id_token}")
        except AuthError as e:
            return error_response(401, f"ID token refused: {e.safe_message}")
        if who.claims.get("nonce") != pending.nonce:
            return error_response(401, "ID token refused: nonce does not match this login")
        if not self.ctx.trail.record(who, client_of(request), "login", "", {}, "ok", 303):
            return error_response(503, "audit trail unavailable: no login without a record of it")
        try:
            sid = self.logins.create(who, float(who.claims.get("exp", 0)))  # type: ignore[arg-type]
        except ValueError as e:  # claims too large for a cookie
            log.warning("login of %s: %s", who.username, e)
            return error_response(400, "this login's identity is too large for a cookie; ask for fewer claims")
        response = RedirectResponse(pending.next, status_code=303)
        response.delete_cookie(LOGIN_COOKIE, path=self.prefix)
        response.set_cookie(
            SESSION_COOKIE, sid, path=self.prefix, httponly=True, secure=self.logins.secure, samesite="lax"
        )
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        token = form.get("csrf")
        checked = await asyncio.to_thread(self.logins.check_csrf, request, token if isinstance(token, str) else None)
        if not checked:
            return error_response(403, "missing or wrong CSRF token")
        who = self.logins.principal(request)
        try:
            await asyncio.to_thread(self.logins.end, request)
        except Exception:  # the index is away: the cookie would keep working elsewhere, so say it did not work
            log.exception("logout: cannot record the revocation")
            return error_response(503, "logout could not be recorded; try again")
        self.ctx.trail.record(who, client_of(request), "logout", "", {}, "ok", 303)
        response = RedirectResponse(self.prefix, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=self.prefix)
        return response


def me_extra(ctx: AuditContext, request: Request) -> dict[str, Any]:
    """The CSRF token of a cookie login, for the viewer's own state-changing requests."""
    logins = ctx.logins
    token = logins.csrf(request) if isinstance(logins, Logins) and "authorization" not in request.headers else None
    return {"csrf": token} if token else {}
