"""DEVELOPMENT-ONLY login for the dev issuer: OIDC Authorization Code + PKCE (S256), any name, no password.

It exists so the web viewer's real login flow runs in the demo and the tests. Redirect URIs must be on loopback.
"""

from __future__ import annotations

import base64
import hashlib
import html
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

CODE_TTL = 60.0
MAX_CODES = 1024  # codes not yet exchanged: a flood of sign-ins evicts the oldest, never grows the process
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


@dataclass(slots=True)
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    sub: str
    groups: list[str]
    expires: float


class DevLogin:
    """Authorize (a login form) and token endpoints. Codes are single-use and live a minute."""

    def __init__(self, mint: Callable[..., str]) -> None:
        self._mint = mint
        self._codes: OrderedDict[str, _Code] = OrderedDict()  # in issue order, so in expiry order (one TTL)

    @staticmethod
    def _check(params: dict[str, str]) -> str | None:
        """Why an authorization request is refused, or None."""
        if params.get("response_type") != "code":
            return "response_type must be code"
        if not params.get("client_id"):
            return "client_id is required"
        uri = urlsplit(params.get("redirect_uri", ""))
        if uri.scheme not in ("http", "https") or uri.hostname not in _LOOPBACK:
            return "redirect_uri must be an http(s) URL on loopback (development issuer)"
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return "PKCE with code_challenge_method=S256 is required"
        return None

    def login_page(self, params: dict[str, str]) -> tuple[int, str]:
        why = self._check(params)
        if why:
            return 400, f"<!doctype html><title>refused</title><p>{html.escape(why)}</p>"
        keep: tuple[str, ...] = ("response_type", "client_id", "redirect_uri", "state", "nonce", "code_challenge")
        keep += ("code_challenge_method",)
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(params.get(k, ""))}">' for k in keep if k in params
        )
        return 200, (
            '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Development login</title></head><body>'
            "<h1>Development login</h1><p><strong>DEVELOPMENT-ONLY issuer: anyone may sign in as anyone.</strong></p>"
            f'<form method="post" action="authorize">{hidden}'
            '<p><label>User <input name="username" id="username" required autofocus></label></p>'
            '<p><label>Groups (comma-separated) <input name="groups" id="groups"></label></p>'
            '<p><button type="submit" id="sign-in">Sign in</button></p></form></body></html>'
        )

    def authorize(self, form: dict[str, str]) -> tuple[int, dict[str, str]]:
        """(302, {location}) back to the client with a code, or (400, {error})."""
        why = self._check(form) or (None if form.get("username") else "username is required")
        if why:
            return 400, {"error": why}
        code = secrets.token_urlsafe(24)
        now = time.time()
        while self._codes and next(iter(self._codes.values())).expires <= now:  # the expired ones, oldest first
            self._codes.popitem(last=False)
        while len(self._codes) >= MAX_CODES:
            self._codes.popitem(last=False)
        groups = [g.strip() for g in form.get("groups", "").split(",") if g.strip()]
        self._codes[code] = _Code(
            form["client_id"], form["redirect_uri"], form["code_challenge"], form.get("nonce"), form["username"],
            groups, now + CODE_TTL,
        )  # fmt: skip
        query = {"code": code, **({"state": form["state"]} if "state" in form else {})}
        return 302, {"location": f"{form['redirect_uri']}?{urlencode(query)}"}

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Exchange a code (with its PKCE verifier) for an ID token."""
        if form.get("grant_type") != "authorization_code":
            return 400, {"error": "unsupported_grant_type"}
        code = self._codes.pop(form.get("code", ""), None)
        if code is None or code.expires < time.time():
            return 400, {"error": "invalid_grant", "error_description": "unknown, used or expired code"}
        if form.get("client_id") != code.client_id or form.get("redirect_uri") != code.redirect_uri:
            return 400, {"error": "invalid_grant", "error_description": "client_id or redirect_uri differs"}
        verifier = form.get("code_verifier", "")
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not verifier or not secrets.compare_digest(digest, code.challenge):
            return 400, {"error": "invalid_grant", "error_description": "PKCE verifier does not match the challenge"}
        extra = {"nonce": code.nonce} if code.nonce else {}
        id_token = self._mint(code.sub, aud=code.client_id, groups=code.groups, ttl=3600, extra_claims=extra)
        return 200, {"id_token": id_token, "token_type": "Bearer", "expires_in": 3600}
