"""The one secrets classifier: header names, query parameter names and JSON keys get the same answer."""

from __future__ import annotations

import pytest

from extproc.secrets import is_secret_name


@pytest.mark.parametrize(
    "name",
    [
        "password", "db_password", "PASSWORD", "passwd", "pwd", "x-pass", "passphrase",
        "secret", "clientSecret", "AWS_SECRET_ACCESS_KEY", "x-tenant-secret",
        "token", "access_token", "refreshToken", "x-csrf-token", "x-amz-security-token",
        "api_key", "apiKey", "x-api-key", "x-upstream-apikey", "x-functions-key", "private_key",
        "authorization", "proxy-authorization", "x-forwarded-authorization", "x-auth-token", "auth",
        "cookie", "set-cookie", "credentials", "x-aws-credential",
        "pat", "x-github-pat", "jwt", "sig", "signature", "otp",
    ],
)  # fmt: skip
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        ":authority", ":path", "mcp-session-id", "mcp-protocol-version", "content-type", "accept", "user-agent",
        "x-request-id", "keyboard", "x-author", "max_tokens", "tokenizer", "passenger", "patch", "page", "path",
        "compass", "monkey", "text", "title",
    ],
)  # fmt: skip
def test_ordinary_names(name: str) -> None:
    assert not is_secret_name(name)
