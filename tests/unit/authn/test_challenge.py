"""WWW-Authenticate values and RFC 9728 protected resource metadata."""

from __future__ import annotations

import pytest

from extproc.authn.challenge import (
    METADATA_PATH,
    protected_resource_metadata,
    resource_metadata_url,
    www_authenticate,
)
from extproc.authn.config import AuthConfig
from extproc.authn.errors import AuthError, IssuerUnavailable, MissingToken, TokenExpired, UnknownKeyId, WrongAudience

META = "https://gw.example.test/.well-known/oauth-protected-resource"


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        pytest.param(MissingToken(), f'Bearer resource_metadata="{META}"', id="no-token-no-error"),
        pytest.param(
            TokenExpired(),
            f'Bearer error="invalid_token", error_description="token expired", resource_metadata="{META}"',
            id="expired",
        ),
        pytest.param(
            WrongAudience(),
            'Bearer error="invalid_token", error_description="token audience is not this resource", '
            f'resource_metadata="{META}"',
            id="wrong-audience",
        ),
        pytest.param(
            UnknownKeyId('k"\\1'),
            'Bearer error="invalid_token", error_description="token signed with unknown key id \'k\\"\\\\\\\\1\'", '
            f'resource_metadata="{META}"',
            id="quotes-and-backslashes-escaped",
        ),
        pytest.param(IssuerUnavailable(), f'Bearer resource_metadata="{META}"', id="issuer-unavailable"),
    ],
)
def test_www_authenticate(err: AuthError, expected: str) -> None:
    assert www_authenticate(err, META) == expected


def test_www_authenticate_never_contains_line_breaks() -> None:
    value = www_authenticate(AuthError("bad\r\nSet-Cookie: x=1\u00e9"), META)
    assert "\r" not in value and "\n" not in value and value.isascii()


def _cfg(**extra: object) -> AuthConfig:
    return AuthConfig.model_validate(
        {"issuers": [{"issuer": "https://idp.test/realms/x"}], "public_url": "https://gw.example.test", **extra}
    )


def test_protected_resource_metadata() -> None:
    assert protected_resource_metadata(_cfg(scopes_supported=["mcp:tools"])) == {
        "resource": "https://gw.example.test",
        "authorization_servers": ["https://idp.test/realms/x"],
        "bearer_methods_supported": ["header"],
        "scopes_supported": ["mcp:tools"],
    }
    doc = protected_resource_metadata(_cfg(resource="https://mcp.example.test"))
    assert doc["resource"] == "https://mcp.example.test"
    assert "scopes_supported" not in doc


@pytest.mark.parametrize(
    ("public_url", "expected"),
    [
        pytest.param("https://gw.example.test", f"https://gw.example.test{METADATA_PATH}", id="root"),
        pytest.param("https://gw.example.test/", f"https://gw.example.test{METADATA_PATH}", id="trailing-slash"),
        pytest.param("https://gw.example.test/mcp", f"https://gw.example.test{METADATA_PATH}/mcp", id="with-path"),
    ],
)
def test_resource_metadata_url(public_url: str, expected: str) -> None:
    assert resource_metadata_url(_cfg(public_url=public_url)) == expected
