"""Bearer token -> Principal against a real development issuer on loopback: accepted and rejected tokens."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import tokens
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from extproc.authn.dev_issuer import DevIssuer
from extproc.authn.errors import (
    AlgorithmNotAllowed,
    AuthError,
    BadSignature,
    MalformedToken,
    MissingClaim,
    MissingToken,
    TokenExpired,
    TokenNotYetValid,
    TokenTooLarge,
    UnknownKeyId,
    WrongAudience,
    WrongIssuer,
)
from extproc.authn.principal import Principal
from extproc.authn.verify import Authenticator, claim_at, identity_headers

AUD = "https://gw.example.test"


def _forge(header: dict, payload: dict, sign: Callable[[bytes], bytes] = lambda _: b"") -> str:
    return tokens.forge(header, payload, sign)


def _claims(iss: DevIssuer, **extra: object) -> dict:
    now = int(time.time())
    return {"iss": iss.url, "sub": "mallory", "aud": AUD, "iat": now, "exp": now + 600, **extra}


def _bearer(token: str) -> str:
    return f"Bearer {token}"


# --- accepted ------------------------------------------------------------------------------------------------


async def test_valid_token_gives_principal_from_configured_claim_paths(issuer: DevIssuer, make_auth) -> None:
    auth = await make_auth(issuer.url, username_claim="preferred_username", groups_claim="realm_access.roles")
    token = issuer.mint(
        "u-123", aud=AUD, extra_claims={"preferred_username": "alice", "realm_access": {"roles": ["eng", "ops"]}}
    )
    who = await auth.authenticate(_bearer(token))
    jti = who.claims["jti"]
    assert who == Principal(issuer=issuer.url, subject="u-123", username="alice", groups=("eng", "ops"), token_id=jti)


@pytest.mark.parametrize(
    ("path", "claims"),
    [
        pytest.param("groups", {"groups": ["eng"]}, id="plain"),
        pytest.param("cognito:groups", {"cognito:groups": ["eng"]}, id="colon-is-not-a-separator"),
        pytest.param("realm_access.roles", {"realm_access": {"roles": ["eng"]}}, id="nested"),
        pytest.param("https://example.com/roles", {"https://example.com/roles": ["eng"]}, id="literal-dotted-name"),
        pytest.param("team", {"team": "eng"}, id="single-string"),
    ],
)
async def test_groups_claim_paths(issuer: DevIssuer, make_auth, path: str, claims: dict) -> None:
    auth = await make_auth(issuer.url, groups_claim=path)
    who = await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD, extra_claims={"groups": None, **claims})))
    assert who.groups == ("eng",)


async def test_missing_groups_claim_means_no_groups(issuer: DevIssuer, auth: Authenticator) -> None:
    who = await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD, extra_claims={"groups": None})))
    assert who.groups == ()
    assert who.username == "alice"  # default username claim: sub


async def test_token_id_without_jti_is_hash_prefix(issuer: DevIssuer, auth: Authenticator) -> None:
    token = issuer.mint("alice", aud=AUD, extra_claims={"jti": None})
    who = await auth.authenticate(_bearer(token))
    assert who.token_id == hashlib.sha256(token.encode()).hexdigest()[:16]


async def test_audience_list_containing_resource_is_accepted(issuer: DevIssuer, auth: Authenticator) -> None:
    who = await auth.authenticate(_bearer(issuer.mint("alice", aud=["https://other.test", AUD])))
    assert who.subject == "alice"


async def test_verified_tokens_are_cached(issuer: DevIssuer, auth: Authenticator) -> None:
    header = _bearer(issuer.mint("alice", aud=AUD))
    first = await auth.authenticate(header)
    assert await auth.authenticate(header) is first
    assert auth.cache_hits == 1


async def test_jku_and_x5u_headers_are_ignored(issuer: DevIssuer, auth: Authenticator) -> None:
    headers = {"jku": "http://127.0.0.1:1/evil-jwks", "x5u": "http://127.0.0.1:1/evil.pem"}
    who = await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD, headers=headers)))
    assert who.subject == "alice"


async def test_attacker_key_with_jku_to_attacker_jwks_is_rejected(
    issuer: DevIssuer, auth: Authenticator, clock, tmp_path: Path
) -> None:
    with DevIssuer(tmp_path / "attacker") as attacker:
        headers = {"jku": f"{attacker.url}/jwks", "x5u": f"{attacker.url}/jwks"}
        # Its own kid: unknown to the real issuer.
        forged = attacker.keys.mint("admin", aud=AUD, issuer=issuer.url, headers=headers)
        clock.advance(60)
        with pytest.raises(UnknownKeyId):
            await auth.authenticate(_bearer(forged))
        # The real issuer's kid: the signature does not verify with the real key.
        forged = attacker.keys.mint("admin", aud=AUD, issuer=issuer.url, headers=headers, kid=issuer.keys.current_kid)
        with pytest.raises(BadSignature):
            await auth.authenticate(_bearer(forged))
        assert attacker.jwks_fetches == 0


# --- rejected ------------------------------------------------------------------------------------------------

_OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_OTHER_EC = ec.generate_private_key(ec.SECP256R1())


def _alg_none(iss: DevIssuer) -> str | None:
    return _bearer(tokens.alg_none(iss, AUD))


def _hs256_with_public_key(iss: DevIssuer) -> str | None:
    return _bearer(tokens.hs256_with_public_key(iss, AUD))


def _altered_payload(iss: DevIssuer) -> str | None:
    return _bearer(tokens.altered_payload(iss, AUD))


REJECTED = [
    pytest.param(lambda iss: None, MissingToken, id="no-header"),
    pytest.param(lambda iss: "Basic YWxpY2U6c2VjcmV0", MissingToken, id="basic-scheme"),
    pytest.param(lambda iss: "Bearer ", MissingToken, id="empty-bearer"),
    pytest.param(_alg_none, AlgorithmNotAllowed, id="alg-none"),
    pytest.param(_hs256_with_public_key, AlgorithmNotAllowed, id="hs256-with-public-key"),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, key=_OTHER_RSA)), BadSignature, id="other-key-known-kid"),
    pytest.param(
        lambda iss: _bearer(iss.mint("a", aud=AUD, key=_OTHER_EC, alg="ES256")), BadSignature, id="ec-alg-on-rsa-kid"
    ),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, issuer="https://evil.test")), WrongIssuer, id="wrong-iss"),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud="https://other.test")), WrongAudience, id="wrong-aud"),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, ttl=-3600)), TokenExpired, id="expired"),
    pytest.param(
        lambda iss: _bearer(iss.mint("a", aud=AUD, extra_claims={"nbf": int(time.time()) + 3600})),
        TokenNotYetValid,
        id="not-yet-valid",
    ),
    pytest.param(
        lambda iss: _bearer(iss.mint("a", aud=AUD, extra_claims={"iat": int(time.time()) + 3600})),
        TokenNotYetValid,
        id="issued-in-future",
    ),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, extra_claims={"exp": None})), MissingClaim, id="no-exp"),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, extra_claims={"sub": None})), MissingClaim, id="no-sub"),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, extra_claims={"aud": None})), MissingClaim, id="no-aud"),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, extra_claims={"sub": 7})), MalformedToken, id="int-sub"),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, extra_claims={"jti": 7})), MalformedToken, id="int-jti"),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, extra_claims={"iat": "x"})), MalformedToken, id="bad-iat"),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, extra_claims={"nbf": "x"})), MalformedToken, id="bad-nbf"),
    pytest.param(
        lambda iss: _bearer(iss.mint("a", aud=AUD, extra_claims={"groups": [1]})), MalformedToken, id="bad-groups"
    ),
    pytest.param(
        lambda iss: _bearer(iss.mint("a", aud=AUD, headers={"crit": ["exp"]})), MalformedToken, id="unsupported-crit"
    ),
    pytest.param(
        lambda iss: _bearer(_forge({"alg": "RS256", "kid": 5}, _claims(iss))), MalformedToken, id="non-string-kid"
    ),
    pytest.param(_altered_payload, BadSignature, id="payload-altered"),
    pytest.param(lambda iss: "Bearer not-a-jwt", MalformedToken, id="garbage"),
    pytest.param(lambda iss: "Bearer abc.def.ghi", MalformedToken, id="bad-base64-json"),
    pytest.param(lambda iss: "Bearer a$b.c%d.e^f", MalformedToken, id="bad-base64-chars"),
    pytest.param(lambda iss: "Bearer a.b.c.d.e", MalformedToken, id="jwe"),
    pytest.param(lambda iss: "Bearer " + "a" * 20_000, TokenTooLarge, id="oversized"),
    pytest.param(lambda iss: _bearer(iss.mint("a", aud=AUD, kid="no-such-key")), UnknownKeyId, id="unknown-kid"),
]


async def test_an_untrusted_issuer_is_named_to_the_client_and_the_trusted_ones_only_in_the_log(
    issuer: DevIssuer, auth: Authenticator
) -> None:
    with pytest.raises(WrongIssuer) as caught:
        await auth.authenticate(_bearer(issuer.mint("a", aud=AUD, issuer="http://127.0.0.1:1/dead-demo-issuer")))
    assert caught.value.safe_message == "token issuer 'http://127.0.0.1:1/dead-demo-issuer' is not trusted"
    assert issuer.url not in caught.value.safe_message  # configuration stays inside
    # the processor logs the exception text ("exchange … refused: WrongIssuer …")
    assert str(caught.value) == (
        f"token issuer 'http://127.0.0.1:1/dead-demo-issuer' is not trusted; trusted: {issuer.url}"
    )


@pytest.mark.parametrize(
    ("iss", "error", "message"),
    [
        (None, MissingClaim, "token is missing required claim 'iss'"),
        ("x" * 5000, WrongIssuer, "token issuer '" + "x" * 200 + "' is not trusted"),
    ],
)
async def test_a_missing_or_odd_issuer_claim_is_named_precisely(
    issuer: DevIssuer, auth: Authenticator, iss: object, error: type[AuthError], message: str
) -> None:
    with pytest.raises(error) as caught:
        await auth.authenticate(_bearer(issuer.mint("a", aud=AUD, extra_claims={"iss": iss})))
    assert caught.value.safe_message == message


@pytest.mark.parametrize(("make_header", "error"), REJECTED)
async def test_rejected(issuer: DevIssuer, auth: Authenticator, make_header, error: type[AuthError]) -> None:
    with pytest.raises(error) as caught:
        await auth.authenticate(make_header(issuer))
    message = caught.value.safe_message
    public_n = issuer.keys.jwks()["keys"][0]["n"]
    assert public_n[:16] not in message and "BEGIN" not in message  # no key material in errors
    assert caught.value.status == 401


async def test_username_claim_missing_is_refused(issuer: DevIssuer, make_auth) -> None:
    auth = await make_auth(issuer.url, username_claim="email")
    with pytest.raises(MissingClaim, match="email"):
        await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD)))


async def test_required_claims(issuer: DevIssuer, make_auth) -> None:
    auth = await make_auth(issuer.url, required_claims=["client.id"])
    with pytest.raises(MissingClaim, match=r"client\.id"):
        await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD)))
    ok = await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD, extra_claims={"client": {"id": "c1"}})))
    assert ok.subject == "alice"


async def test_disallowed_algorithm_for_issuer(issuer: DevIssuer, make_auth) -> None:
    auth = await make_auth(issuer.url, algorithms=["ES256"])
    with pytest.raises(AlgorithmNotAllowed, match="RS256"):
        await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD)))


# --- helpers -----------------------------------------------------------------------------------------


def test_claim_at() -> None:
    claims = {"a": {"b": {"c": 1}}, "x.y": 2, "s": "str"}
    assert claim_at(claims, "a.b.c") == 1
    assert claim_at(claims, "x.y") == 2
    assert claim_at(claims, "a.z") is None
    assert claim_at(claims, "s.deeper") is None


def test_identity_headers_are_header_safe() -> None:
    who = Principal(issuer="i", subject="s", username="alice\r\nx-evil: 1", groups=("eng", "a,b"))
    headers = identity_headers(who)
    assert headers["x-mcp-user"] == "alice%0D%0Ax-evil:%201"
    assert headers["x-mcp-groups"] == "eng,a%2Cb"


async def test_token_without_kid_only_when_issuer_has_a_single_key(issuer: DevIssuer, auth: Authenticator) -> None:
    assert (await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD, headers={"kid": None})))).subject == "alice"
    issuer.rotate()
    await auth.keysets[issuer.url].refresh()
    with pytest.raises(MalformedToken, match="no key id"):
        await auth.authenticate(_bearer(issuer.mint("bob", aud=AUD, headers={"kid": None})))


async def test_huge_exp_does_not_break_the_cache(issuer: DevIssuer, auth: Authenticator) -> None:
    header = _bearer(issuer.mint("alice", aud=AUD, extra_claims={"exp": 10**400}))
    assert (await auth.authenticate(header)).subject == "alice"
    assert (await auth.authenticate(header)).subject == "alice"
    assert auth.cache_hits == 1


async def test_absurdly_nested_token_header_is_malformed_not_a_crash(auth: Authenticator) -> None:
    nested = tokens.b64(b"[" * 3000 + b"]" * 3000)  # deeper than the JSON decoder's recursion limit
    with pytest.raises(MalformedToken):
        await auth.authenticate(f"Bearer {nested}.e30.sig")


# --- two issuers: the same `sub` is two different people ----------------------------------------------------------


async def test_users_and_groups_are_qualified_per_issuer_when_several_issuers_are_trusted(
    issuer: DevIssuer, clock, tmp_path: Path
) -> None:
    from extproc.authn.config import AuthConfig

    with DevIssuer(tmp_path / "second") as second:
        cfg = AuthConfig.model_validate(
            {
                "issuers": [{"issuer": issuer.url}, {"issuer": second.url, "username_prefix": "partner:"}],
                "public_url": AUD,
            }
        )
        auth = Authenticator(cfg, clock=clock)
        await auth.start()
        try:
            first = await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD, groups=["eng"])))
            other = await auth.authenticate(_bearer(second.mint("alice", aud=AUD, groups=["eng"])))
        finally:
            await auth.close()

    assert (first.username, first.groups) == (f"{issuer.url}#alice", (f"{issuer.url}#eng",))
    assert (other.username, other.groups) == ("partner:alice", (f"{second.url}#eng",))
    assert first.subject == other.subject == "alice"  # the token's own claim, kept as is (with its issuer)
    assert identity_headers(first)["x-mcp-user"] == f"{issuer.url}#alice"


async def test_a_single_issuer_keeps_plain_names(issuer: DevIssuer, auth: Authenticator) -> None:
    who = await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD, groups=["eng"])))
    assert (who.username, who.groups) == ("alice", ("eng",))
