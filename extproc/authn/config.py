"""The ``auth:`` section of gateway.yaml: trusted issuers and how the gateway presents itself as a resource."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Asymmetric algorithms only. `none` and HMAC (HS*) are never accepted: with HMAC the "key" would be the
# issuer's *public* key, which anyone can fetch (the classic algorithm-confusion attack).
SUPPORTED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")

_LOOPBACK = {"localhost", "127.0.0.1", "::1"}

Seconds = Annotated[float, Field(gt=0, le=86_400)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_url(v: str, what: str) -> str:
    """http(s) URL without query or fragment; plain http only on loopback (development)."""
    u = urlsplit(v)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"{what} must be an http(s) URL, got {v!r}")
    if u.query or u.fragment:
        raise ValueError(f"{what} must not have a query or fragment")
    if u.scheme == "http" and u.hostname not in _LOOPBACK:
        raise ValueError(f"{what} must use https (http is only allowed on localhost)")
    return v


def origin_of(url: str) -> str:
    """'https://Host:443/path' -> 'https://host': scheme://host[:port] as browsers send it in Origin."""
    u = urlsplit(url)
    host = u.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = "" if u.port in (None, {"http": 80, "https": 443}.get(u.scheme)) else f":{u.port}"
    return f"{u.scheme}://{host}{port}"


class IssuerConfig(_Model):
    """One trusted OpenID Connect / OAuth issuer."""

    issuer: str  # must equal the tokens' `iss` claim exactly
    audiences: list[str] = []  # accepted `aud` values; empty -> the gateway's resource identifier
    algorithms: list[str] = list(DEFAULT_ALGORITHMS)
    # Dotted claim paths: `groups`, `cognito:groups`, `realm_access.roles`. Split on dots only; a claim whose
    # whole name contains dots (Auth0's `https://example.com/roles`) is found by its literal name first.
    username_claim: str = "sub"
    groups_claim: str = "groups"
    required_claims: list[str] = []  # on top of exp, iss, aud and sub, which are always required
    clock_skew_seconds: Annotated[float, Field(ge=0, le=600)] = 60
    jwks_uri: str | None = None  # skip discovery and use this JWKS URL
    jwks_refresh_seconds: Seconds = 300
    unknown_kid_refetch_seconds: Seconds = 30  # at most one JWKS refetch per interval for unknown `kid`s
    # Put before every username / group of this issuer's tokens (the Kubernetes API server's
    # --oidc-username-prefix / --oidc-groups-prefix). None = the default: no prefix when this is the only issuer,
    # "<issuer>#" when there are several, so `sub=alice` of one issuer is never `alice` of another.
    username_prefix: str | None = None
    groups_prefix: str | None = None

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        return _check_url(v, "issuer")

    @field_validator("jwks_uri")
    @classmethod
    def _jwks_uri(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v, "jwks_uri")

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one algorithm is required")
        for alg in v:
            if alg not in SUPPORTED_ALGORITHMS:
                raise ValueError(
                    f"algorithm {alg!r} is not accepted; choose from {', '.join(sorted(SUPPORTED_ALGORITHMS))} "
                    "('none' and HMAC are never allowed)"
                )
        return v

    @field_validator("username_claim", "groups_claim")
    @classmethod
    def _claim_path(cls, v: str) -> str:
        if not v or any(not part for part in v.split(".")):
            raise ValueError(f"invalid claim path {v!r}")
        return v

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"


def _default_prefix(issuer: IssuerConfig, several: bool) -> str:
    return f"{issuer.issuer}#" if several else ""


class AuthConfig(_Model):
    """Authentication of MCP clients: every request needs a bearer token from one of ``issuers``."""

    issuers: list[IssuerConfig]
    public_url: str  # the gateway's public base URL; the resource metadata URL is derived from it
    resource: str | None = None  # RFC 8707 resource identifier; defaults to public_url
    scopes_supported: list[str] = []
    # Browser Origins allowed to call (DNS-rebinding defence). The origin of public_url is always allowed;
    # requests without an Origin header (non-browser clients) are always allowed.
    allowed_origins: list[str] = []
    max_token_bytes: Annotated[int, Field(ge=1024, le=1 << 20)] = 16384
    forward_identity_headers: bool = False  # set x-mcp-user / x-mcp-groups on the upstream request
    # Key for binding MCP session ids to their owner. If unset, a random key is generated at start (with a
    # warning): then sessions do not survive a restart, and several workers or replicas must share a file.
    session_secret_file: str | None = None

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, v: str) -> str:
        return _check_url(v, "public_url")

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        out = []
        for o in v:
            u = urlsplit(o)
            if u.scheme not in ("http", "https") or not u.hostname or u.path not in ("", "/"):
                raise ValueError(f"origin {o!r} must look like scheme://host[:port]")
            out.append(origin_of(o))
        return out

    @model_validator(mode="after")
    def _issuers(self) -> AuthConfig:
        if not self.issuers:
            raise ValueError("issuers: at least one issuer is required")
        names = [i.issuer for i in self.issuers]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise ValueError(f"issuer {dup!r} is configured twice")
        default = len(self.issuers) > 1
        resolved = [
            i.model_copy(
                update={
                    "username_prefix": i.username_prefix
                    if i.username_prefix is not None
                    else _default_prefix(i, default),
                    "groups_prefix": i.groups_prefix if i.groups_prefix is not None else _default_prefix(i, default),
                }
            )
            for i in self.issuers
        ]
        for kind in ("username_prefix", "groups_prefix"):
            prefixes = [getattr(i, kind) for i in resolved]
            shared = next((p for p in prefixes if prefixes.count(p) > 1), None)
            if shared is not None:
                raise ValueError(
                    f"issuers: {kind} {shared!r} is used by more than one issuer, so their users or groups could be "
                    "mistaken for each other; give each issuer its own prefix (or leave it unset: '<issuer>#')"
                )
        object.__setattr__(self, "issuers", resolved)  # frozen model: the resolved prefixes, set once at load
        return self

    @property
    def resource_id(self) -> str:
        """The identifier tokens must carry in ``aud`` unless an issuer lists its own audiences."""
        return self.resource or self.public_url

    def audiences_for(self, issuer: IssuerConfig) -> list[str]:
        return issuer.audiences or [self.resource_id]
