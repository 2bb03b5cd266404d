"""Per-issuer signing keys: OIDC discovery, a JWKS cache refreshed in the background, rate-limited refetch.

Rules, in the order they matter:
- a failing discovery or JWKS endpoint never drops keys we already have (the last good set keeps working);
- an unknown ``kid`` triggers at most one fetch per ``unknown_kid_refetch_seconds``, so a flood of tokens
  with random kids cannot hammer the identity provider;
- with no keys at all the caller gets ``IssuerUnavailable`` (503) — never an unauthenticated pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import jwt

from extproc.authn.config import IssuerConfig
from extproc.authn.errors import IssuerUnavailable, MalformedToken, UnknownKeyId
from extproc.tasks import cancel

log = logging.getLogger(__name__)

FetchJson = Callable[[str], Awaitable[dict[str, Any]]]
Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]

MAX_DOCUMENT_BYTES = 1 << 20
COLD_RETRY_SECONDS = 5.0  # background retry period while we have no keys at all


class HttpFetcher:
    """Default ``fetch_json``: GET with short timeouts, no redirects, a size cap, JSON object required."""

    def __init__(self, timeout: float = 5.0) -> None:
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=2.0), follow_redirects=False, headers={"accept": "application/json"}
        )

    async def __call__(self, url: str) -> dict[str, Any]:
        async with self._client.stream("GET", url) as resp:
            if resp.status_code != 200:
                raise ValueError(f"GET {url} answered HTTP {resp.status_code}")
            body = b""
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise ValueError(f"GET {url}: document larger than {MAX_DOCUMENT_BYTES} bytes")
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise ValueError(f"GET {url}: expected a JSON object")
        return doc

    async def aclose(self) -> None:
        await self._client.aclose()


@dataclass(frozen=True, slots=True)
class SigningKey:
    """A public key from the JWKS, with what it may be used for."""

    kid: str
    kty: str  # RSA, EC or OKP
    alg: str | None  # the JWK's declared `alg`, if any: then tokens must use exactly that
    key: Any  # a cryptography public key object


@dataclass(slots=True)
class JwksMetrics:
    discovery_fetches: int = 0
    jwks_fetches: int = 0
    fetch_failures: int = 0
    refetches_suppressed: int = 0  # unknown-kid refetches skipped by the rate limit
    last_success: float | None = None  # clock() of the last JWKS fetch that gave keys


def parse_jwks(doc: dict[str, Any]) -> dict[str, SigningKey]:
    """JWKS document -> {kid: key}. Unusable keys (symmetric, encryption-only, malformed) are skipped."""
    keys: dict[str, SigningKey] = {}
    for jwk in doc.get("keys") or []:
        if not isinstance(jwk, dict) or jwk.get("kty") not in ("RSA", "EC", "OKP"):
            continue  # `oct` (symmetric) keys are never trusted from a JWKS
        if jwk.get("use", "sig") != "sig":
            continue
        kid = jwk.get("kid", "")
        if not isinstance(kid, str) or kid in keys:
            continue
        try:
            key = jwt.PyJWK(jwk).key
        except (jwt.PyJWTError, ValueError, TypeError) as e:
            log.warning("skipping unusable JWKS key %r: %s", kid[:64], type(e).__name__)
            continue
        alg = jwk.get("alg")
        keys[kid] = SigningKey(kid=kid, kty=jwk["kty"], alg=alg if isinstance(alg, str) else None, key=key)
    return keys


class KeySet:
    """The signing keys of one issuer."""

    def __init__(
        self, cfg: IssuerConfig, fetch_json: FetchJson, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.cfg = cfg
        self.metrics = JwksMetrics()
        self._fetch = fetch_json
        self._clock = clock
        self._sleep = sleep
        self._keys: dict[str, SigningKey] = {}
        self._jwks_uri = cfg.jwks_uri
        self._last_attempt: float | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def has_keys(self) -> bool:
        """Ready to verify (for a readiness check)."""
        return bool(self._keys)

    def keys_age(self) -> float | None:
        """Seconds since the keys were last fetched successfully (None: never)."""
        last = self.metrics.last_success
        return None if last is None else self._clock() - last

    def has(self, kid: str) -> bool:
        """Is this key still published? (Cached verifications stop counting once their key is withdrawn.)"""
        return kid in self._keys

    async def refresh(self) -> bool:
        """Fetch discovery (once) and the JWKS now; on failure keep the last good keys. True on success."""
        async with self._lock:
            return await self._refresh_locked()

    async def key_for(self, kid: str | None) -> SigningKey:
        """The key a token names; refetches (rate-limited) for an unknown kid. Raises the typed errors."""
        key = self._lookup(kid)
        if key is None:
            async with self._lock:  # one refetch at a time; waiters then see its result
                key = self._lookup(kid)
                if key is None and self._may_refetch():
                    await self._refresh_locked()
                    key = self._lookup(kid)
                elif key is None:
                    self.metrics.refetches_suppressed += 1
        if key is not None:
            return key
        if not self._keys:
            log.warning("no signing keys for issuer %s yet; refusing its tokens with 503", self.cfg.issuer)
            raise IssuerUnavailable()
        if kid is None:
            raise MalformedToken("token header has no key id (kid) and the issuer publishes several keys")
        raise UnknownKeyId(kid)

    def start(self) -> None:
        """Start the background refresh task (idempotent)."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"jwks-refresh {self.cfg.issuer}")

    async def close(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    # --- internals ---------------------------------------------------------------------------------------

    def _lookup(self, kid: str | None) -> SigningKey | None:
        if kid is None:  # allowed only when there is no ambiguity
            return next(iter(self._keys.values())) if len(self._keys) == 1 else None
        return self._keys.get(kid)

    def _may_refetch(self) -> bool:
        last = self._last_attempt
        return last is None or self._clock() - last >= self.cfg.unknown_kid_refetch_seconds

    async def _refresh_locked(self) -> bool:
        self._last_attempt = self._clock()
        try:
            if self._jwks_uri is None:
                self._jwks_uri = await self._discover()
            self.metrics.jwks_fetches += 1
            keys = parse_jwks(await self._fetch(self._jwks_uri))
            if not keys:
                raise ValueError("JWKS has no usable signing keys")
        except Exception as e:  # any failure: keep what we have
            self.metrics.fetch_failures += 1
            if self.cfg.jwks_uri is None:
                self._jwks_uri = None  # rediscover next time, in case the JWKS moved
            log.warning(
                "cannot refresh signing keys of %s (%s: %s); keeping %d cached key(s)",
                self.cfg.issuer,
                type(e).__name__,
                e,
                len(self._keys),
            )
            return False
        self.metrics.last_success = self._clock()
        if keys.keys() != self._keys.keys():
            log.info("issuer %s now publishes key ids %s", self.cfg.issuer, sorted(k[:64] for k in keys))
        self._keys = keys
        return True

    async def _discover(self) -> str:
        self.metrics.discovery_fetches += 1
        doc = await self._fetch(self.cfg.discovery_url)
        # OIDC Discovery 1.0 §4.3: the document's issuer must be exactly the one we asked about.
        if doc.get("issuer") != self.cfg.issuer:
            raise ValueError(f"discovery document names issuer {str(doc.get('issuer'))[:200]!r}")
        uri = doc.get("jwks_uri")
        # Keys for an https issuer must come over https too; plain http is for a loopback dev issuer only.
        schemes = ("https://",) if self.cfg.issuer.startswith("https://") else ("https://", "http://")
        if not isinstance(uri, str) or not uri.startswith(schemes):
            raise ValueError("discovery document has no usable jwks_uri")
        return uri

    async def _run(self) -> None:
        while True:
            await self._sleep(self.cfg.jwks_refresh_seconds if self._keys else COLD_RETRY_SECONDS)
            await self.refresh()
