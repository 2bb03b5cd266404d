"""Bearer token -> Principal. Pure identity logic: no gRPC or protobuf types here.

Verification order (each step fails closed with a precise error):
1. ``Authorization: Bearer <jwt>`` only; oversized tokens are refused before any parsing.
2. A cache of verified tokens (by SHA-256, until ``exp``, only while the signing key is still published).
3. The unverified ``iss`` picks the issuer, the unverified header's ``alg`` must be allowed for it, and its
   ``kid`` picks the key from *that issuer's* JWKS. ``jku``/``x5u``/``jwk`` headers are never looked at.
4. pyjwt verifies signature, then iss, aud, exp, nbf, iat (with the issuer's clock skew); exp, iss, aud and
   sub are required — pyjwt would accept a token without exp unless told to require it.
"""

from __future__ import annotations

import asyncio
import binascii
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import jwt
import jwt.exceptions as jex
from jwt.utils import base64url_decode

from extproc.authn.config import AuthConfig, IssuerConfig
from extproc.authn.errors import (
    AlgorithmNotAllowed,
    BadSignature,
    MalformedToken,
    MissingClaim,
    MissingToken,
    TokenError,
    TokenExpired,
    TokenNotYetValid,
    TokenTooLarge,
    WrongAudience,
    WrongIssuer,
)
from extproc.authn.jwks import Clock, FetchJson, HttpFetcher, KeySet, SigningKey, Sleep
from extproc.authn.principal import Principal

log = logging.getLogger(__name__)

ALWAYS_REQUIRED = ["exp", "iss", "aud", "sub"]
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_KEY_TYPE = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}  # algorithm family -> JWK kty


def bearer_token(authorization: str | None, max_bytes: int) -> str:
    """The token from ``Authorization: Bearer <token>``; size and shape checked, nothing decoded yet."""
    if not authorization:
        raise MissingToken()
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise MissingToken()
    if len(token) > max_bytes:
        raise TokenTooLarge(f"token larger than {max_bytes} bytes")
    if not _JWT_SHAPE.fullmatch(token):
        if token.count(".") == 4:
            raise MalformedToken("encrypted tokens (JWE) are not supported")
        raise MalformedToken()
    return token


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """Value at a dotted claim path (``realm_access.roles``), or None. A literal key with dots wins."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def identity_headers(who: Principal) -> dict[str, str]:
    """``x-mcp-user`` / ``x-mcp-groups`` for the upstream; percent-encoded so they are always header-safe."""
    return {
        "x-mcp-user": quote(who.username, safe="@._-+:/#"),
        "x-mcp-groups": ",".join(quote(g, safe="@._-+:/#") for g in who.groups),
    }


@dataclass(slots=True)
class _Cached:
    principal: Principal
    expires: float
    keyset: KeySet
    kid: str


class Authenticator:
    """Verifies bearer tokens against the configured issuers. One per process; safe for concurrent use."""

    def __init__(
        self,
        cfg: AuthConfig,
        *,
        fetch_json: FetchJson | None = None,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        cache_size: int = 10_000,
    ) -> None:
        self.cfg = cfg
        self._own_fetcher: HttpFetcher | None = None
        if fetch_json is None:
            fetch_json = self._own_fetcher = HttpFetcher()
        self.keysets = {i.issuer: KeySet(i, fetch_json, clock=clock, sleep=sleep) for i in cfg.issuers}
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._cache_size = cache_size
        self.cache_hits = 0

    async def start(self) -> None:
        """Fetch every issuer's keys once and start background refresh. Never raises: the IdP may be down."""
        results = await asyncio.gather(*(ks.refresh() for ks in self.keysets.values()))
        for ks, ok in zip(self.keysets.values(), results, strict=True):
            if not ok:
                log.warning("issuer %s has no signing keys yet; its tokens get 503 until it answers", ks.cfg.issuer)
            ks.start()

    async def close(self) -> None:
        for ks in self.keysets.values():
            await ks.close()
        if self._own_fetcher is not None:
            await self._own_fetcher.aclose()

    async def authenticate(self, authorization_header: str | None) -> Principal:
        """The verified caller, or one of the typed ``AuthError``s."""
        token = bearer_token(authorization_header, self.cfg.max_token_bytes)
        digest = hashlib.sha256(token.encode()).digest()
        hit = self._cache.get(digest)
        if hit is not None:
            if hit.expires > time.time() and hit.keyset.has(hit.kid):
                self._cache.move_to_end(digest)
                self.cache_hits += 1
                return hit.principal
            del self._cache[digest]

        header, unverified = _split(token)
        iss = unverified.get("iss")
        keyset = self.keysets.get(iss) if isinstance(iss, str) else None
        if keyset is None:
            if not isinstance(iss, str):
                raise MissingClaim("iss") if iss is None else MalformedToken("token claim 'iss' must be a string")
            raise WrongIssuer(iss, tuple(self.keysets))
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in keyset.cfg.algorithms:
            raise AlgorithmNotAllowed(str(alg)[:32])
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise MalformedToken("token header 'kid' must be a string")
        key = await keyset.key_for(kid)
        claims = self._verify(token, key, alg, keyset.cfg)
        who = _principal(claims, keyset.cfg, digest)

        self._cache[digest] = _Cached(who, int(claims["exp"]), keyset, key.kid)  # float() overflows on huge ints
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return who

    def _verify(self, token: str, key: SigningKey, alg: str, issuer: IssuerConfig) -> dict[str, Any]:
        if key.alg is not None and key.alg != alg:
            raise BadSignature(f"token algorithm {alg} does not match its signing key")
        if _KEY_TYPE.get(alg[:2]) != key.kty:
            raise BadSignature(f"token algorithm {alg} does not fit a {key.kty} key")
        try:
            return jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.cfg.audiences_for(issuer),
                issuer=issuer.issuer,
                leeway=issuer.clock_skew_seconds,
                options={
                    "require": ALWAYS_REQUIRED,
                    "verify_signature": True,
                    "verify_exp": True,
                    "verify_nbf": True,
                    "verify_iat": True,
                    "verify_aud": True,
                    "verify_iss": True,
                    "verify_sub": True,
                    "enforce_minimum_key_length": True,
                },
            )
        except jex.PyJWTError as e:
            raise _translate(e) from None
        except (TypeError, ValueError) as e:  # key object rejected by the algorithm (e.g. wrong EC curve)
            raise BadSignature(f"token algorithm {alg} does not fit its signing key") from e


def _split(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Unverified header and payload, only to choose issuer and key."""
    try:
        header_b64, payload_b64, _ = token.split(".")
        header = json.loads(base64url_decode(header_b64))
        payload = json.loads(base64url_decode(payload_b64))
    except (ValueError, binascii.Error, RecursionError) as e:  # bad base64, UTF-8 or JSON; absurd nesting
        raise MalformedToken() from e
    if not isinstance(header, dict) or not isinstance(payload, dict):
        raise MalformedToken()
    return header, payload


# pyjwt's exception -> our precise, client-safe error. First match wins, so subclasses come before their bases
# (InvalidSignatureError is a DecodeError).
_TRANSLATIONS: list[tuple[type[jex.PyJWTError], Callable[[Any], TokenError]]] = [
    (jex.ExpiredSignatureError, lambda e: TokenExpired()),
    (jex.ImmatureSignatureError, lambda e: TokenNotYetValid()),
    (jex.MissingRequiredClaimError, lambda e: MissingClaim(e.claim)),
    (jex.InvalidAudienceError, lambda e: WrongAudience()),
    (jex.InvalidIssuerError, lambda e: WrongIssuer()),
    (jex.InvalidSignatureError, lambda e: BadSignature()),
    (jex.InvalidAlgorithmError, lambda e: BadSignature("token algorithm does not fit its signing key")),
    (jex.InvalidKeyError, lambda e: BadSignature("token signing key rejected")),
    (jex.InvalidIssuedAtError, lambda e: MalformedToken("token claim 'iat' must be a number")),
    (jex.InvalidSubjectError, lambda e: MalformedToken("token claim 'sub' must be a string")),
    (jex.InvalidJTIError, lambda e: MalformedToken("token claim 'jti' must be a string")),
    (jex.DecodeError, lambda e: MalformedToken(f"token is not a well-formed JWT: {e}"[:200])),
    (jex.InvalidTokenError, lambda e: MalformedToken(f"token rejected: {e}"[:200])),  # e.g. unsupported `crit`
]


def _translate(e: jex.PyJWTError) -> TokenError:
    return next((make(e) for cls, make in _TRANSLATIONS if isinstance(e, cls)), TokenError())


def _principal(claims: dict[str, Any], issuer: IssuerConfig, digest: bytes) -> Principal:
    if not claims["sub"]:
        raise MissingClaim("sub")
    for path in issuer.required_claims:
        if claim_at(claims, path) is None:
            raise MissingClaim(path)
    username = claim_at(claims, issuer.username_claim)
    if not isinstance(username, str) or not username:
        raise MissingClaim(issuer.username_claim)
    groups = claim_at(claims, issuer.groups_claim)
    if groups is None:
        groups = []
    elif isinstance(groups, str):
        groups = [groups]
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise MalformedToken(f"token claim {issuer.groups_claim!r} must be a list of strings")
    jti = claims.get("jti")
    token_id = jti[:128] if isinstance(jti, str) and jti else digest.hex()[:16]
    return Principal(
        issuer=issuer.issuer,
        subject=claims["sub"],
        username=(issuer.username_prefix or "") + username,
        groups=tuple((issuer.groups_prefix or "") + g for g in groups),
        token_id=token_id,
        claims=claims,
    )
