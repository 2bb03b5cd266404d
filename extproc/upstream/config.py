"""``servers[].upstream_auth`` in gateway.yaml: how the gateway authenticates to one server for the caller.

Four kinds, chosen by ``kind``; the caller's own token never goes upstream whichever is chosen:

- ``token_exchange`` (RFC 8693): the caller's verified token is exchanged at the issuer for one minted for this
  server alone (``audience`` / ``resource``, RFC 8707), sent as ``Authorization: Bearer``.
- ``static``: a service credential read from a file (a mounted Secret), re-read when it changes.
- ``assertion``: a short-lived JWT the gateway signs itself (sub, groups, session, exchange id), JWKS published.
- ``id_jag``: enterprise-managed authorization; the IdP issues an ID-JAG for the server's authorization server,
  which turns it into the access token (RFC 7523 JWT bearer grant).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from extproc.authn.config import _check_url

_HEADER = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
_SCOPE = re.compile(r"^[\x21\x23-\x5b\x5d-\x7e]+$")  # RFC 6749 scope-token: printable ASCII but space, " and \
# Headers a credential may never be written into: they carry routing, the session or the gateway's own facts.
_RESERVED_HEADERS = {"host", "content-length", "content-type", "mcp-session-id", "x-mcp-upstream", "x-request-id"}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _absolute_file(v: Path | None) -> Path | None:
    if v is not None and not v.is_absolute():
        raise ValueError(f"{v}: must be an absolute path (a mounted Secret's path)")
    return v


def _header_name(v: str) -> str:
    v = v.lower()
    if not _HEADER.match(v) or v in _RESERVED_HEADERS or v.startswith(":"):
        raise ValueError(
            f"{v!r} cannot carry a credential (lowercase letters, digits, '-'; not {sorted(_RESERVED_HEADERS)})"
        )
    return v


class TokenExchange(_Model):
    """RFC 8693 token exchange at the caller's issuer, the gateway authenticating as a confidential client."""

    kind: Literal["token_exchange"]
    client_id: str = Field(min_length=1, max_length=256, description="the gateway's client id at the issuer")
    client_secret_file: Path | None = Field(None, description="client_secret_basic: the secret, read from this file")
    private_key_file: Path | None = Field(None, description="private_key_jwt: PEM key (RSA, EC P-256 or Ed25519)")
    private_key_id: str | None = Field(None, description="kid of the client assertion's key, if the issuer needs it")
    audience: str | None = Field(None, description="RFC 8693 audience: the server's name at the issuer")
    resource: str | None = Field(None, description="RFC 8707 resource: the server's URI")
    scopes: list[str] = Field([], description="scopes asked for (the issuer may grant fewer, never more)")
    issuer: str | None = Field(None, description="only callers of this issuer; default: whichever issuer verified them")
    token_endpoint: str | None = Field(None, description="skip discovery and use this token endpoint")
    # The whole exchange (discovery, every token request): below processor.message_timeout_ms, or Envoy gives up first.
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 3.0
    refresh_before_s: Annotated[float, Field(ge=0, le=3600, description="renew this long before expiry")] = 30.0
    max_cache_s: Annotated[float, Field(gt=0, le=86_400, description="never reuse a token longer than this")] = 3600.0

    _files = field_validator("client_secret_file", "private_key_file")(_absolute_file)

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, v: list[str]) -> list[str]:
        for s in v:
            if not _SCOPE.match(s):
                raise ValueError(f"scope {s!r} is not an RFC 6749 scope token")
        return sorted(set(v))

    @field_validator("issuer", "token_endpoint", "resource")
    @classmethod
    def _url(cls, v: str | None, info: object) -> str | None:
        return None if v is None else _check_url(v, getattr(info, "field_name", "url"))

    @model_validator(mode="after")
    def _complete(self) -> TokenExchange:
        if (self.client_secret_file is None) == (self.private_key_file is None):
            raise ValueError("give exactly one of client_secret_file or private_key_file (client authentication)")
        if self.audience is None and self.resource is None:
            raise ValueError("give audience and/or resource: the issued token must name this server alone")
        return self


class Static(_Model):
    """A service credential from a file, sent in ``header`` (the caller still named in x-mcp-user if forwarded)."""

    kind: Literal["static"]
    file: Path = Field(description="the credential, e.g. a mounted Kubernetes Secret's key; re-read when it changes")
    header: str = Field("authorization", description="the request header that carries it")
    prefix: str = Field("", description="put before the file's content, e.g. 'Bearer '")
    check_interval_s: Annotated[float, Field(ge=0, le=300, description="how often the file is looked at")] = 1.0

    _file = field_validator("file")(_absolute_file)
    _header = field_validator("header")(_header_name)


class Assertion(_Model):
    """A JWT the gateway signs per request: who the caller is, for this server alone (``aud``)."""

    kind: Literal["assertion"]
    key_file: Path = Field(description="Ed25519 or EC P-256 private key (PEM); its public half is in the JWKS")
    audience: str = Field(min_length=1, description="aud: the server's own name for itself")
    header: str = Field("x-mcp-identity", description="the request header that carries the JWT")
    ttl_s: Annotated[int, Field(ge=5, le=3600)] = 60

    _file = field_validator("key_file")(_absolute_file)
    _header = field_validator("header")(_header_name)


class IdJag(TokenExchange):
    """Enterprise-managed authorization (Identity Assertion JWT Authorization Grant): the caller's token is
    exchanged at its IdP for an ID-JAG naming the server's authorization server, which is presented there in the
    JWT bearer grant (RFC 7523) for the access token the server gets. The subject token is the caller's access
    token (the gateway never holds an ID token); the IdP must accept that."""

    kind: Literal["id_jag"]  # type: ignore[assignment]
    authorization_server: str = Field(description="issuer URL of the server's authorization server (ID-JAG aud)")
    as_client_id: str | None = Field(None, description="the gateway's client id there; default: client_id")
    as_client_secret_file: Path = Field(description="the gateway's client secret there (client_secret_basic)")
    as_token_endpoint: str | None = Field(None, description="skip its discovery and use this token endpoint")

    _as_file = field_validator("as_client_secret_file")(_absolute_file)

    @field_validator("authorization_server", "as_token_endpoint")
    @classmethod
    def _as_url(cls, v: str | None) -> str | None:
        return None if v is None else _check_url(v, "authorization_server")

    @model_validator(mode="after")
    def _id_jag(self) -> IdJag:
        if self.resource is None or self.audience is not None:
            raise ValueError("id_jag: give resource (the server) and authorization_server, not audience")
        return self


UpstreamAuth = Annotated[IdJag | TokenExchange | Static | Assertion, Field(discriminator="kind")]

# Where the gateway publishes the public keys of its identity assertions (answered by the processor).
JWKS_PATH = "/.well-known/mcp-extproc/jwks.json"
