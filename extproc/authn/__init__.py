"""Authentication: OIDC discovery, JWKS cache and bearer-token verification -> Principal."""

from extproc.authn.principal import Principal

__all__ = ["Principal"]
