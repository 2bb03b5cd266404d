"""The web viewer: static assets shipped in the package, and the login (OIDC Authorization Code + PKCE).

The login is held server-side; the browser holds only a random id in an HttpOnly, SameSite=Lax cookie (Secure
when the public URL is https). State-changing requests (logout, re-drive) need the login's CSRF token in the
``x-csrf-token`` header or a ``csrf`` form field. Logins live in this process's memory: a restart logs everyone
out, and several replicas need sticky routing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from extproc.audit.config import Audit
from extproc.audit.context import AuditContext, client_of, error_response
from extproc.authn.config import AuthConfig
from extproc.authn.principal import Principal
from extproc.authn.verify import Authenticator
from extproc.errors import AuthError
from extproc.settings import Settings

log = logging.getLogger(__name__)

SESSION_COOKIE = "mcp_audit"
LOGIN_COOKIE = "mcp_audit_login"
LOGIN_TTL = 600.0
MAX_LOGIN_SECONDS = 8 * 3600.0
# Started logins are unauthenticated state: anyone may start one. Bounded in count (oldest evicted first) and in
# bytes (``next`` at most MAX_NEXT characters; the rest is fixed-size): at most ~3.5 MB whatever the callers do.
MAX_PENDING_LOGINS = 1024
MAX_NEXT = 2048
# Finished logins need an ID token from the issuer, but one user can log in over and over: bounded as well.
MAX_LOGINS = 4096


def static_dir() -> Path:
    return Path(str(resources.files("extproc.audit") / "static"))


def pkce_challenge(verifier: str) -> str:
    """RFC 7636 S256."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


@dataclass(slots=True)
class _Login:
    principal: Principal
    csrf: str
    expires: float


@dataclass(slots=True)
class _Pending:
    verifier: str
    nonce: str
    next: str
    expires: float


def _same(given: str, expected: str) -> bool:
    """Constant-time equality; as bytes, since ``hmac.compare_digest`` raises on non-ASCII text (a 500)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8", "surrogateescape"))


class PendingLogins:
    """Started logins by ``state``, until the callback or LOGIN_TTL: O(1) per login, at most ``limit`` held.

    Every entry lives the same TTL, so insertion order is expiry order: expired ones are dropped from the front,
    and past the limit the oldest goes first (its browser gets "login expired; start again").
    """

    def __init__(self, limit: int = MAX_PENDING_LOGINS, ttl: float = LOGIN_TTL, clock: Callable[[], float] = time.time):
        self.limit, self.ttl, self.clock = limit, ttl, clock
        self._by_state: OrderedDict[str, _Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._by_state)

    def add(self, state: str, verifier: str, nonce: str, next_path: str) -> None:
        now = self.clock()
        while self._by_state:
            oldest = next(iter(self._by_state.values()))
            if oldest.expires > now and len(self._by_state) < self.limit:
                break
            self._by_state.popitem(last=False)
        self._by_state[state] = _Pending(verifier, nonce, next_path, now + self.ttl)

    def take(self, state: str) -> _Pending | None:
        """The login started with ``state``, once; None when unknown, evicted or expired."""
        pending = self._by_state.pop(state, None)
        return pending if pending is not None and pending.expires > self.clock() else None


@dataclass
class Logins:
    """Server-side logins keyed by the cookie's random id, at most ``limit`` (the oldest login ends first)."""

    cookie_path: str
    secure: bool
    clock: Any = time.time
    limit: int = MAX_LOGINS
    _logins: OrderedDict[str, _Login] = field(default_factory=OrderedDict)

    def principal(self, request: Request) -> Principal | None:
        login = self._get(request)
        return login.principal if login else None

    def csrf(self, request: Request) -> str | None:
        login = self._get(request)
        return login.csrf if login else None

    def _get(self, request: Request) -> _Login | None:
        sid = request.cookies.get(SESSION_COOKIE)
        login = self._logins.get(sid) if sid else None
        if login is not None and login.expires <= self.clock():
            self._logins.pop(sid or "", None)
            return None
        return login

    def __len__(self) -> int:
        return len(self._logins)

    def create(self, who: Principal, expires: float) -> tuple[str, _Login]:
        now = self.clock()
        # Oldest first; expired ones further in are dropped when next used (``_get``), and the count is capped.
        while self._logins:
            oldest = next(iter(self._logins.values()))
            if oldest.expires > now and len(self._logins) < self.limit:
                break
            self._logins.popitem(last=False)
        sid = secrets.token_urlsafe(32)
        login = self._logins[sid] = _Login(who, secrets.token_urlsafe(24), min(expires, now + MAX_LOGIN_SECONDS))
        return sid, login

    def end(self, request: Request) -> None:
        self._logins.pop(request.cookies.get(SESSION_COOKIE, ""), None)

    def check_csrf(self, request: Request, form_token: str | None = None) -> bool:
        """A state-changing request carries the login's CSRF token (header or form field)."""
        login = self._get(request)
        token = request.headers.get("x-csrf-token") or form_token
        return login is not None and token is not None and _same(token, login.csrf)


class WebViewer:
    """Static UI plus login/callback/logout against the configured issuer."""

    def __init__(self, audit: Audit, auth: AuthConfig, ctx: AuditContext) -> None:
        self.audit = audit
        self.prefix = audit.prefix
        self.ctx = ctx
        self.public_base = auth.public_url.rstrip("/")
        self.logins = Logins(audit.prefix, auth.public_url.startswith("https://"))
        self.pending = PendingLogins()
        self._discovery: dict[str, Any] | None = None
        self._http = httpx.AsyncClient(timeout=10)
        issuer = next((i for i in auth.issuers if i.issuer == audit.login_issuer), auth.issuers[0])
        self.issuer = issuer
        self.secret = audit.client_secret_file.read_text().strip() if audit.client_secret_file else None
        page = (static_dir() / "index.html").read_text().replace("{{PREFIX}}", self.prefix)
        # Without a client the viewer shows how to turn login on instead of a Log in link that cannot work.
        self._page = page.replace("{{LOGIN}}", "on" if audit.client_id else "off")
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
        return cls(settings.audit or Audit(), settings.auth, ctx)

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
        self.pending.add(state, verifier, nonce, next_path)
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
        response.set_cookie(
            LOGIN_COOKIE, state, max_age=int(LOGIN_TTL), path=self.prefix, httponly=True,
            secure=self.logins.secure, samesite="lax",
        )  # fmt: skip
        return response

    async def callback(self, request: Request) -> Response:
        state = request.query_params.get("state", "")
        bound = request.cookies.get(LOGIN_COOKIE, "")
        pending = self.pending.take(state) if state and _same(state, bound) else None
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
        sid, _ = self.logins.create(who, float(who.claims.get("exp", 0)))  # type: ignore[arg-type]
        response = RedirectResponse(pending.next, status_code=303)
        response.delete_cookie(LOGIN_COOKIE, path=self.prefix)
        response.set_cookie(
            SESSION_COOKIE, sid, path=self.prefix, httponly=True, secure=self.logins.secure, samesite="lax"
        )
        return response

    async def logout(self, request: Request) -> Response:
        form = await request.form()
        token = form.get("csrf")
        if not self.logins.check_csrf(request, token if isinstance(token, str) else None):
            return error_response(403, "missing or wrong CSRF token")
        who = self.logins.principal(request)
        self.logins.end(request)
        self.ctx.trail.record(who, client_of(request), "logout", "", {}, "ok", 303)
        response = RedirectResponse(self.prefix, status_code=303)
        response.delete_cookie(SESSION_COOKIE, path=self.prefix)
        return response


def me_extra(ctx: AuditContext, request: Request) -> dict[str, Any]:
    """The CSRF token of a cookie login, for the viewer's own state-changing requests."""
    logins = ctx.logins
    token = logins.csrf(request) if isinstance(logins, Logins) and "authorization" not in request.headers else None
    return {"csrf": token} if token else {}
