"""The gateway's identity assertion: verifiable with its published JWK, bound to one audience, short-lived."""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from extproc.authn.principal import Principal
from extproc.errors import Forbidden
from extproc.upstream.assertion import AssertionKey, GatewayAssertion
from extproc.upstream.base import ExchangeContext
from extproc.upstream.config import Assertion

ALICE = Principal(issuer="https://idp.test", subject="alice-id", username="alice", groups=("eng",))


def _key_file(tmp_path: Path, key: object) -> Path:
    path = tmp_path / "key.pem"
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


@pytest.mark.parametrize(
    ("make", "alg"),
    [
        pytest.param(ed25519.Ed25519PrivateKey.generate, "EdDSA", id="ed25519"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), "ES256", id="p256"),
    ],
)
async def test_the_assertion_verifies_with_the_published_jwk_for_its_audience_only(tmp_path, make, alg) -> None:
    path = _key_file(tmp_path, make())
    key = AssertionKey(path)
    cfg = Assertion(kind="assertion", key_file=path, audience="reports")
    events: list = []
    headers = await GatewayAssertion(cfg, key, "https://gw.test", clock=lambda: 1_900_000_000).headers_for(
        ALICE, "reports", ExchangeContext("ex-1", "", "sess-1", "", events.append)
    )

    token = headers["x-mcp-identity"]
    public = jwt.PyJWK(key.jwk).key
    options = {"verify_exp": False, "verify_iat": False, "verify_nbf": False}
    claims = jwt.decode(token, public, algorithms=[alg], audience="reports", issuer="https://gw.test", options=options)
    assert claims["sub"] == "alice-id" and claims["groups"] == ["eng"] and claims["src_iss"] == "https://idp.test"
    assert claims["sid"] == "sess-1" and claims["exchange_id"] == "ex-1" and claims["exp"] - claims["iat"] == 60
    assert jwt.get_unverified_header(token)["kid"] == key.kid == AssertionKey(path).kid  # stable: a thumbprint
    with pytest.raises(jwt.InvalidAudienceError):
        jwt.decode(token, public, algorithms=[alg], audience="github", options=options)
    assert events[0].kind == "assertion" and events[0].audience == ["reports"] and events[0].sha256


def test_an_rsa_key_is_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="Ed25519 or EC P-256"):
        AssertionKey(_key_file(tmp_path, rsa.generate_private_key(65537, 2048)))


async def test_an_anonymous_caller_gets_no_assertion(tmp_path) -> None:
    path = _key_file(tmp_path, ed25519.Ed25519PrivateKey.generate())
    creds = GatewayAssertion(Assertion(kind="assertion", key_file=path, audience="r"), AssertionKey(path), "https://g")
    with pytest.raises(Forbidden):
        await creds.headers_for(None, "r", ExchangeContext("ex"))
