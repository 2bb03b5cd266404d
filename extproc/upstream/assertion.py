"""``upstream_auth: {kind: assertion}``: a short-lived JWT the gateway signs per request, saying who the caller is.

The server verifies it with the gateway's JWKS (served by the processor at ``JWKS_PATH``), its ``aud`` naming that
server alone: replayed to another server it is refused there. Claims: iss (the gateway's public URL), aud, sub,
the caller's issuer, username, groups, the session (or stateless run) and the exchange id, iat/nbf/exp, jti.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from extproc.authn.principal import Principal
from extproc.errors import Forbidden
from extproc.upstream.base import ExchangeContext, UpstreamCredential, digest, emit
from extproc.upstream.config import Assertion


class AssertionKey:
    """The gateway's signing key (Ed25519 -> EdDSA, EC P-256 -> ES256) and its public JWK (kid: RFC 7638 thumbprint)."""

    def __init__(self, path: Path) -> None:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if isinstance(key, ed25519.Ed25519PrivateKey):
            self.alg = "EdDSA"
            jwk = json.loads(jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key()))
            members = {k: jwk[k] for k in ("crv", "kty", "x")}
        elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP256R1):
            self.alg = "ES256"
            jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
            members = {k: jwk[k] for k in ("crv", "kty", "x", "y")}
        else:
            raise ValueError(f"{path}: identity assertions need an Ed25519 or EC P-256 key, not {type(key).__name__}")
        self.key = key
        canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
        self.kid = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
        self.jwk = {**members, "kid": self.kid, "use": "sig", "alg": self.alg}


class GatewayAssertion:
    """Mints the assertion for one server."""

    kind = "assertion"

    def __init__(self, cfg: Assertion, key: AssertionKey, issuer: str, clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.key = key
        self.issuer = issuer
        self._clock = clock

    async def headers_for(self, principal: Principal | None, server: str, ctx: ExchangeContext) -> dict[str, str]:
        """``{header: <JWT>}``; an anonymous caller has nobody to assert (refused)."""
        if principal is None:
            raise Forbidden(f"server {server!r} needs a verified caller to assert")
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.cfg.audience,
            "sub": principal.subject,
            "src_iss": principal.issuer,
            "preferred_username": principal.username,
            "groups": list(principal.groups),
            "exchange_id": ctx.exchange_id,
            "iat": now,
            "nbf": now,
            "exp": now + self.cfg.ttl_s,
            "jti": secrets.token_urlsafe(12),
        }
        if ctx.session:
            claims["sid"] = ctx.session
        token = jwt.encode(claims, self.key.key, algorithm=self.key.alg, headers={"kid": self.key.kid, "typ": "JWT"})
        emit(
            ctx,
            UpstreamCredential(
                server=server,
                kind=self.kind,
                header=self.cfg.header,
                sha256=digest(token),
                expires_at=float(now + self.cfg.ttl_s),
                audience=[self.cfg.audience],
                delegation=[principal.subject, "gateway"],
            ),
        )
        return {self.cfg.header: token}
