"""RFC 8693 token exchange: the caller's verified token in, a token for this one server out.

Per request, in order:
1. the caller must be verified and (if configured) of the configured issuer; anonymous callers get nothing;
2. the cache (cache.py) answers for (issuer, subject, server, scopes) while the token has time left;
3. else one exchange per key at a time: POST to the issuer's token endpoint (discovery's ``token_endpoint``) with
   the gateway's client authentication (client_secret_basic or private_key_jwt, RFC 7523), ``audience`` and/or
   ``resource`` (RFC 8707) naming the server, and the configured scopes;
4. the answer is checked (a bearer access token with a lifetime) and recorded by hash, with the delegation chain
   read from its ``act`` claim; an IdP that cannot be reached, times out or answers 5xx is a 503, one that
   refuses (``invalid_grant``, ``invalid_target``, ``invalid_scope``...) a 403 naming its error code.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from extproc.authn.principal import Principal
from extproc.errors import Forbidden, UpstreamIdentityRefused, UpstreamIdentityUnavailable
from extproc.upstream.base import CredentialLog, ExchangeContext, UpstreamCredential, digest, emit
from extproc.upstream.cache import CredentialCache, Issued
from extproc.upstream.config import IdJag, TokenExchange
from extproc.upstream.files import WatchedFile

log = logging.getLogger(__name__)

GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
ID_JAG = "urn:ietf:params:oauth:token-type:id-jag"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ISSUED_TYPES = (ACCESS_TOKEN, "urn:ietf:params:oauth:token-type:jwt")
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_ERROR_CODE = re.compile(r"^[a-z_]{1,64}$")
MAX_RESPONSE_BYTES = 64 << 10
# A refusal is the caller's (403); these are the gateway's own problem (its client is not known, or the IdP is
# misconfigured): the client cannot fix them, so they are 503 like an outage, the code recorded and logged.
_GATEWAY_SIDE = {"invalid_client", "unauthorized_client", "unsupported_grant_type", "server_error"}


def _signing_key(path: Any) -> tuple[Any, str]:
    """The client assertion's key and algorithm, from a PEM file (RSA -> RS256, P-256 -> ES256, Ed25519 -> EdDSA)."""
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if isinstance(key, rsa.RSAPrivateKey):
        return key, "RS256"
    if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
        return key, "ES256"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key, "EdDSA"
    raise ValueError(f"{path}: unsupported key type {type(key).__name__} (RSA, EC P-256 or Ed25519)")


def delegation_chain(subject: str, claims: dict[str, Any]) -> tuple[str, ...]:
    """``act`` claims (RFC 8693 §4.1), outermost actor first in the token, as subject -> actor -> earlier actor."""
    chain = [subject]
    act = claims.get("act")
    while isinstance(act, dict) and len(chain) < 16:
        sub = act.get("sub")
        chain.append(str(sub)[:256] if sub is not None else "?")
        act = act.get("act")
    return tuple(chain)


class TokenExchanger:
    """``upstream_auth: {kind: token_exchange}`` of one server."""

    kind = "token_exchange"

    def __init__(
        self,
        server: str,
        cfg: TokenExchange,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        cache: CredentialCache | None = None,
    ) -> None:
        self.server = server
        self.cfg = cfg
        self._http = http
        self._clock = clock
        self.cache = cache or CredentialCache(clock, cfg.refresh_before_s, cfg.max_cache_s)
        self._secret = WatchedFile(cfg.client_secret_file, clock) if cfg.client_secret_file else None
        self._key = _signing_key(cfg.private_key_file) if cfg.private_key_file else None  # fails at start-up
        self._endpoints: dict[str, str] = {}  # issuer -> token endpoint, from discovery
        self.audience = tuple(x for x in (cfg.audience, cfg.resource) if x)
        self._scopes = tuple(cfg.scopes)  # the cache key's, made once

    async def headers_for(self, principal: Principal | None, server: str, ctx: ExchangeContext) -> dict[str, str]:
        """``Authorization: Bearer <a token for this server alone>``, issued for the caller."""
        if principal is None or not principal.issuer or not ctx.subject_token:
            raise Forbidden(f"server {server!r} needs a verified caller to exchange a token for")
        if self.cfg.issuer is not None and principal.issuer != self.cfg.issuer:
            raise Forbidden(f"server {server!r} accepts only callers of issuer {self.cfg.issuer}")
        key = (principal.issuer, principal.subject, server, self._scopes)
        try:
            issued, cached = await self.cache.get(key, lambda: self._within_deadline(principal, ctx))
        except (UpstreamIdentityRefused, UpstreamIdentityUnavailable) as e:
            refused = e.refused or {"error": type(e).__name__, "description": str(e)[:500]}
            emit(ctx, UpstreamCredential(server=server, kind=self.kind, header="authorization", refused=refused))
            raise _for_request(e, ctx) from None
        self._used(server, issued, cached, ctx)
        return {"authorization": issued.bearer}

    def warm(self, principal: Principal | None, server: str, ctx: ExchangeContext) -> dict[str, str] | None:
        """``headers_for``'s answer from the cache, without a coroutine; None when it needs ``headers_for`` (a miss,
        or a caller it refuses). The same key, so the same rule: the caller's own entry or none."""
        if principal is None or not principal.issuer or not ctx.subject_token:
            return None
        if self.cfg.issuer is not None and principal.issuer != self.cfg.issuer:
            return None
        issued = self.cache.peek((principal.issuer, principal.subject, server, self._scopes))
        if issued is None:
            return None
        self._used(server, issued, True, ctx)
        return {"authorization": issued.bearer}

    def _used(self, server: str, issued: Issued, cached: bool, ctx: ExchangeContext) -> None:
        """Named in the exchange's end when already recorded in full in its unit, else recorded in full."""
        rec = ctx.record
        if isinstance(rec, CredentialLog) and rec.name(server, self.kind, issued.sha256, issued.expires_at, cached):
            return
        emit(
            ctx,
            UpstreamCredential(
                server=server,
                kind=self.kind,
                header="authorization",
                sha256=issued.sha256,
                expires_at=issued.expires_at,
                cached=cached,
                audience=list(issued.audience),
                scopes=list(issued.scopes),
                delegation=list(issued.delegation),
            ),
        )

    # --- one exchange ----------------------------------------------------------------------------------------

    async def _within_deadline(self, who: Principal, ctx: ExchangeContext) -> Issued:
        """All the exchange's requests within ``timeout_s`` together: the answer must reach Envoy before its
        message timeout, as ours (503) rather than Envoy's."""
        try:
            async with asyncio.timeout(self.cfg.timeout_s):
                return await self._exchange(who, ctx)
        except TimeoutError as e:
            raise _unavailable(f"exchange for {self.server!r} took over {self.cfg.timeout_s}s", "timeout") from e

    async def _exchange(self, who: Principal, ctx: ExchangeContext) -> Issued:
        endpoint = await self.token_endpoint(who.issuer)
        form: dict[str, str] = {
            "grant_type": GRANT_TYPE,
            "subject_token": ctx.subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "requested_token_type": ACCESS_TOKEN,
        }
        if self.cfg.audience:
            form["audience"] = self.cfg.audience
        if self.cfg.resource:
            form["resource"] = self.cfg.resource
        if self.cfg.scopes:
            form["scope"] = " ".join(self.cfg.scopes)
        return self._issued(await self._post(endpoint, form, who), who)

    async def _post(
        self, endpoint: str, form: dict[str, str], who: Principal, client: tuple[str, WatchedFile] | None = None
    ) -> dict[str, Any]:
        """One token request, authenticated as the gateway's client (``client``: another id and secret); its answer,
        or the error it maps to (unavailable: 503; refused: 403 naming the IdP's code)."""
        headers = {"accept": "application/json"}
        try:
            self.client_authentication(form, headers, endpoint, client)
        except (OSError, ValueError) as e:
            raise _unavailable(f"client credentials for {self.server!r} unreadable: {e}", "client_credentials") from e
        t0 = time.perf_counter()
        try:
            resp = await self._http.post(endpoint, data=form, headers=headers, timeout=self.cfg.timeout_s)
            body = resp.content[: MAX_RESPONSE_BYTES + 1]
        except httpx.TimeoutException as e:
            raise _unavailable(f"token endpoint {endpoint} timed out after {self.cfg.timeout_s}s", "timeout") from e
        except httpx.HTTPError as e:
            raise _unavailable(f"token endpoint {endpoint}: {type(e).__name__}: {e}", "unreachable") from e
        log.debug("token request for %s at %s: HTTP %d in %.1f ms", self.server, endpoint, resp.status_code,
                  (time.perf_counter() - t0) * 1000)  # fmt: skip
        doc = json_document(body)
        if resp.status_code != 200:
            code = doc.get("error") if isinstance(doc, dict) else None
            code = code if isinstance(code, str) and _ERROR_CODE.match(code) else None
            desc = str(doc.get("error_description", ""))[:500] if isinstance(doc, dict) else ""
            refused = {"error": code or f"http_{resp.status_code}", "description": desc, "status": resp.status_code,
                       "endpoint": endpoint}  # fmt: skip
            if code is None or resp.status_code >= 500 or code in _GATEWAY_SIDE:
                err: UpstreamIdentityRefused | UpstreamIdentityUnavailable = _unavailable(
                    f"token endpoint {endpoint} answered HTTP {resp.status_code} {code}: {desc}", ""
                )
            else:
                err = UpstreamIdentityRefused(code, self.server)
            err.refused = refused
            log.warning("token request for %s (caller %s) refused: %s", self.server, who.username, refused)
            raise err
        if not isinstance(doc, dict):
            raise _unavailable(f"token endpoint {endpoint} answered 200 without a JSON object", "bad_response")
        return doc

    def _issued(self, doc: dict[str, Any], who: Principal) -> Issued:
        """Check the token response (RFC 8693 §2.2.1) and what is recorded about the token."""
        token = doc.get("access_token")
        kind = str(doc.get("token_type", "")).lower()
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n\0 ") or len(token) > 16384:
            raise _unavailable("token endpoint answered 200 without a usable access_token", "bad_response")
        if kind != "bearer" or doc.get("issued_token_type", ACCESS_TOKEN) not in ISSUED_TYPES:
            raise _unavailable(f"token endpoint issued a {kind!r} token, not a bearer access token", "bad_response")
        lifetime = doc.get("expires_in")
        now = self._clock()
        claims = _unverified_claims(token)
        if isinstance(lifetime, int | float) and not isinstance(lifetime, bool) and lifetime > 0:
            expires = now + float(lifetime)
        elif isinstance(claims.get("exp"), int | float):
            expires = float(claims["exp"])
        else:  # no lifetime at all: used for this request only (max_cache_s caps it anyway)
            expires = now
        scope = doc.get("scope")
        scopes = tuple(scope.split()) if isinstance(scope, str) else tuple(self.cfg.scopes)
        # For the record only (who acted for whom, as the issuer wrote it); the server verifies the token itself.
        chain = delegation_chain(who.subject, claims) if claims else (who.subject, f"client:{self.cfg.client_id}")
        # Reused no longer than the login it was exchanged from: a new login (other groups, fewer scopes) is exchanged
        # anew rather than served a token issued for the old one.
        login = who.claims.get("exp")
        reuse = float(login) if isinstance(login, int | float) and not isinstance(login, bool) else None
        return Issued(token, expires, self.audience, scopes, chain, digest(token), reuse)

    def client_authentication(
        self,
        form: dict[str, str],
        headers: dict[str, str],
        endpoint: str,
        client: tuple[str, WatchedFile] | None = None,
    ) -> None:
        """client_secret_basic (RFC 6749 §2.3.1: both parts form-encoded first) or private_key_jwt (RFC 7523)."""
        if client is not None:
            user, password = quote(client[0], safe=""), quote(client[1].value(), safe="")
            headers["authorization"] = "Basic " + _b64(f"{user}:{password}")
            return
        if self._secret is not None:
            user, password = quote(self.cfg.client_id, safe=""), quote(self._secret.value(), safe="")
            headers["authorization"] = "Basic " + _b64(f"{user}:{password}")
            return
        assert self._key is not None
        key, alg = self._key
        now = int(self._clock())
        claims = {
            "iss": self.cfg.client_id,
            "sub": self.cfg.client_id,
            "aud": endpoint,
            "iat": now,
            "exp": now + 60,
            "jti": secrets.token_urlsafe(16),
        }
        kid = {"kid": self.cfg.private_key_id} if self.cfg.private_key_id else None
        form["client_id"] = self.cfg.client_id
        form["client_assertion_type"] = JWT_BEARER
        form["client_assertion"] = jwt.encode(claims, key, algorithm=alg, headers=kid)

    async def token_endpoint(self, issuer: str) -> str:
        """The configured endpoint, else the issuer's discovery document's."""
        return self.cfg.token_endpoint or await self.discover(issuer)

    async def discover(self, issuer: str) -> str:
        """The token endpoint in ``issuer``'s discovery document (fetched once per issuer; a failure is not kept)."""
        if (known := self._endpoints.get(issuer)) is not None:
            return known
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            resp = await self._http.get(url, timeout=self.cfg.timeout_s)
        except httpx.HTTPError as e:
            raise _unavailable(f"discovery {url}: {type(e).__name__}: {e}", "discovery") from e
        doc = json_document(resp.content[:MAX_RESPONSE_BYTES])
        endpoint = doc.get("token_endpoint") if resp.status_code == 200 and isinstance(doc, dict) else None
        schemes = ("https://",) if issuer.startswith("https://") else ("https://", "http://")
        if not isinstance(endpoint, str) or not endpoint.startswith(schemes) or doc.get("issuer") != issuer:
            raise _unavailable(f"discovery {url}: no usable token_endpoint (HTTP {resp.status_code})", "discovery")
        self._endpoints[issuer] = endpoint
        return endpoint


def _unavailable(detail: str, reason: str) -> UpstreamIdentityUnavailable:
    err = UpstreamIdentityUnavailable(detail)
    err.refused = {"error": reason or "unavailable", "description": detail[:500]}
    return err


def _for_request(
    e: UpstreamIdentityRefused | UpstreamIdentityUnavailable, ctx: ExchangeContext
) -> UpstreamIdentityRefused | UpstreamIdentityUnavailable:
    """The shared failure, re-made for this request (its request id in the client's message)."""
    rid = ctx.request_id or ctx.exchange_id
    if isinstance(e, UpstreamIdentityRefused):
        return UpstreamIdentityRefused(e.code, e.server, rid)
    return UpstreamIdentityUnavailable(str(e), rid)


def json_document(body: bytes) -> Any:
    if len(body) > MAX_RESPONSE_BYTES:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def _unverified_claims(token: str) -> dict[str, Any]:
    """The issued token's claims if it is a JWT (read for the record: exp, act), else {}. Not trusted for anything,
    so not checked either: one base64 and one JSON pass (PyJWT's unverified decode checks the alphabet character
    by character in Python, ~0.3 ms for a typical token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:  # binascii.Error, UnicodeDecodeError and JSONDecodeError are all ValueErrors
        return {}
    return claims if isinstance(claims, dict) else {}


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class IdJagExchanger(TokenExchanger):
    """``upstream_auth: {kind: id_jag}``: ID-JAG from the caller's IdP, then the server's authorization server's
    access token for it. Same cache, failures and records as token exchange."""

    kind = "id_jag"

    def __init__(
        self,
        server: str,
        cfg: IdJag,
        http: httpx.AsyncClient,
        *,
        clock: Callable[[], float] = time.time,
        cache: CredentialCache | None = None,
    ) -> None:
        super().__init__(server, cfg, http, clock=clock, cache=cache)
        self.jag = cfg
        self._as_client = (cfg.as_client_id or cfg.client_id, WatchedFile(cfg.as_client_secret_file, clock))
        self.audience = (cfg.resource,) if cfg.resource else ()

    async def _exchange(self, who: Principal, ctx: ExchangeContext) -> Issued:
        cfg = self.jag
        form = {
            "grant_type": GRANT_TYPE,
            "requested_token_type": ID_JAG,
            "subject_token": ctx.subject_token,
            "subject_token_type": ACCESS_TOKEN,
            "audience": cfg.authorization_server,
            "resource": cfg.resource or "",
        }
        if cfg.scopes:
            form["scope"] = " ".join(cfg.scopes)
        doc = await self._post(await self.token_endpoint(who.issuer), form, who)
        jag = doc.get("access_token")
        if not isinstance(jag, str) or not jag or doc.get("issued_token_type") != ID_JAG:
            raise _unavailable("the IdP answered the ID-JAG request without an ID-JAG", "bad_response")
        endpoint = cfg.as_token_endpoint or await self.discover(cfg.authorization_server)
        grant = {"grant_type": JWT_BEARER_GRANT, "assertion": jag}
        issued = self._issued(await self._post(endpoint, grant, who, self._as_client), who)
        # Who acted for whom: the gateway's client at the IdP obtained the grant, its client at the server's AS used it.
        return replace(issued, delegation=(who.subject, self._as_client[0]))
