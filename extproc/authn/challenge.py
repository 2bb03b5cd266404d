"""How the gateway tells a client to authenticate: WWW-Authenticate (RFC 6750) and RFC 9728 resource metadata."""

from __future__ import annotations

from urllib.parse import urlsplit

from extproc.authn.config import AuthConfig
from extproc.authn.errors import AuthError

METADATA_PATH = "/.well-known/oauth-protected-resource"


def resource_metadata_url(cfg: AuthConfig) -> str:
    """Where clients find our metadata. RFC 9728 §3.1: the well-known segment goes before any path."""
    u = urlsplit(cfg.public_url)
    return f"{u.scheme}://{u.netloc}{METADATA_PATH}{u.path.rstrip('/')}"


def _quoted(value: str) -> str:
    """An HTTP quoted-string: printable ASCII only (no header injection), with \\ and " escaped."""
    printable = "".join(c if " " <= c <= "~" else "?" for c in value)
    return '"' + printable.replace("\\", "\\\\").replace('"', '\\"') + '"'


def www_authenticate(err: AuthError, resource_metadata_url: str) -> str:
    """The WWW-Authenticate value for a refusal. No ``error`` when no credentials were presented (RFC 6750 §3.1)."""
    params = []
    if err.oauth_error:
        params.append(f"error={_quoted(err.oauth_error)}")
        params.append(f"error_description={_quoted(err.safe_message)}")
    params.append(f"resource_metadata={_quoted(resource_metadata_url)}")
    return "Bearer " + ", ".join(params)


def protected_resource_metadata(cfg: AuthConfig) -> dict[str, object]:
    """The RFC 9728 document served at METADATA_PATH. ``scopes_supported`` is omitted when none are configured."""
    doc: dict[str, object] = {
        "resource": cfg.resource_id,
        "authorization_servers": [i.issuer for i in cfg.issuers],
        "bearer_methods_supported": ["header"],
    }
    if cfg.scopes_supported:
        doc["scopes_supported"] = list(cfg.scopes_supported)
    return doc
