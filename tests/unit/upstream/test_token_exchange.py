"""TokenExchanger against the development issuer's real RFC 8693 token endpoint (HTTP on loopback)."""

from __future__ import annotations

import base64
import hashlib
import importlib.abc
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from extproc.authn.dev_issuer import DevIssuer
from extproc.authn.principal import Principal
from extproc.errors import ConfigError, Forbidden, UpstreamIdentityRefused, UpstreamIdentityUnavailable
from extproc.settings import parse
from extproc.upstream.base import ExchangeContext, UpstreamCredential
from extproc.upstream.config import TokenExchange
from extproc.upstream.credentials import Upstream
from extproc.upstream.token_exchange import TokenExchanger, _unverified_claims, delegation_chain


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


@pytest.fixture
def secret(tmp_path: Path, issuer: DevIssuer) -> Path:
    path = tmp_path / "secret"
    path.write_text("pa:ss/word\n")  # characters RFC 6749 §2.3.1 form-encodes inside Basic
    issuer.token_exchange.register_client("gw", secret="pa:ss/word")
    issuer.token_exchange.add_target("gh", scopes=("repo", "read:org"))
    return path


def _who(issuer: DevIssuer, sub: str = "alice", **claims: Any) -> tuple[Principal, str]:
    token = issuer.mint(sub, aud="https://gw.test", extra_claims=claims or None)
    return Principal(issuer=issuer.url, subject=sub, username=sub), token


def _tx(http: httpx.AsyncClient, **cfg: Any) -> TokenExchanger:
    return TokenExchanger(
        "github", TokenExchange.model_validate({"kind": "token_exchange", "client_id": "gw", **cfg}), http
    )


async def _call(tx: TokenExchanger, who: Principal, token: str) -> tuple[dict[str, str], list[UpstreamCredential]]:
    events: list[Any] = []
    headers = await tx.headers_for(who, "github", ExchangeContext("ex1", "req-1", None, token, events.append))
    return headers, events


async def test_issues_a_token_for_the_server_alone_and_records_its_hash(http, issuer, secret) -> None:
    who, token = _who(issuer)
    tx = _tx(http, client_secret_file=str(secret), audience="gh", scopes=["repo"])

    headers, (ev,) = await _call(tx, who, token)

    issued = headers["authorization"].removeprefix("Bearer ")
    claims = issuer.verify(issued)
    assert issued != token and claims["sub"] == "alice" and claims["aud"] == "gh" and claims["scope"] == "repo"
    assert ev.sha256 == hashlib.sha256(issued.encode()).hexdigest() and ev.delegation == ["alice", "gw"]
    assert not ev.cached and ev.refused is None and ev.expires_at and ev.scopes == ["repo"]
    headers2, (ev2,) = await _call(tx, who, token)
    assert headers2 == headers and ev2.cached and issuer.token_exchange.exchanges == 1


async def test_the_delegation_chain_nests_earlier_actors(http, issuer, secret) -> None:
    who, token = _who(issuer, act={"sub": "ci-bot"})
    tx = _tx(http, client_secret_file=str(secret), audience="gh")
    _, (ev,) = await _call(tx, who, token)
    assert ev.delegation == ["alice", "gw", "ci-bot"]


def test_delegation_chain_reads_act_claims() -> None:
    assert delegation_chain("a", {"act": {"sub": "b", "act": {"sub": "c"}}}) == ("a", "b", "c")
    assert delegation_chain("a", {}) == ("a",)


@pytest.mark.parametrize(
    ("cfg", "setup", "code"),
    [
        pytest.param({"audience": "nope"}, None, "invalid_target", id="unknown-audience"),
        pytest.param({"audience": "gh", "scopes": ["admin"]}, None, "invalid_scope", id="scope-up"),
        pytest.param({"audience": "gh"}, {"may_act": {"sub": "other"}}, "invalid_grant", id="may-act-other"),
        pytest.param({"audience": "gh", "scopes": ["read:org"]}, {"scope": "repo"}, "invalid_scope", id="over-subj"),
    ],
)
async def test_a_refusal_is_a_403_naming_the_idps_code(http, issuer, secret, cfg, setup, code) -> None:
    who, token = _who(issuer, **(setup or {}))
    tx = _tx(http, client_secret_file=str(secret), **cfg)
    events: list[Any] = []
    with pytest.raises(UpstreamIdentityRefused) as e:
        await tx.headers_for(who, "github", ExchangeContext("ex1", "req-9", None, token, events.append))
    assert e.value.status == 403 and code in e.value.safe_message and "req-9" in e.value.safe_message
    assert events[0].refused["error"] == code and events[0].sha256 == ""


async def test_wrong_client_secret_is_unavailable_not_the_callers_fault(http, issuer, secret, tmp_path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("guess")
    who, token = _who(issuer)
    with pytest.raises(UpstreamIdentityUnavailable) as e:
        await _call(_tx(http, client_secret_file=str(wrong), audience="gh"), who, token)
    assert e.value.status == 503 and e.value.safe_message == "upstream identity unavailable (request req-1)"


async def test_unreachable_issuer_is_a_503(http, issuer, secret) -> None:
    who, token = _who(issuer)
    tx = _tx(http, client_secret_file=str(secret), audience="gh", token_endpoint="http://127.0.0.1:9/token")
    with pytest.raises(UpstreamIdentityUnavailable):
        await _call(tx, who, token)


async def test_no_caller_or_another_issuer_gets_nothing(http, issuer, secret) -> None:
    tx = _tx(http, client_secret_file=str(secret), audience="gh", issuer="http://127.0.0.1:1")
    who, token = _who(issuer)
    with pytest.raises(Forbidden, match="accepts only callers of issuer"):
        await _call(tx, who, token)
    with pytest.raises(Forbidden, match="needs a verified caller"):
        await _call(tx, None, "")  # type: ignore[arg-type]
    assert issuer.token_exchange.requests == 0


async def test_private_key_jwt(http, issuer, tmp_path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "client.pem"
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.write_bytes(pem)
    issuer.token_exchange.register_client("gw", public_key=key.public_key())
    issuer.token_exchange.add_target("https://api.test/mcp", scopes=("repo",))
    who, token = _who(issuer)
    headers, _ = await _call(_tx(http, private_key_file=str(path), resource="https://api.test/mcp"), who, token)
    assert (
        jwt.decode(headers["authorization"][7:], options={"verify_signature": False})["aud"] == "https://api.test/mcp"
    )


def test_dev_issuer_refuses_a_replayed_client_assertion(issuer, tmp_path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issuer.token_exchange.register_client("gw", public_key=key.public_key())
    issuer.token_exchange.add_target("gh")
    assertion = jwt.encode({"iss": "gw", "sub": "gw", "aud": issuer.url + "/token", "exp": 2**31, "jti": "j1"}, key,
                           algorithm="ES256")  # fmt: skip
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "audience": "gh",
            "subject_token": issuer.mint("alice", aud="x"), "client_id": "gw",
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion}  # fmt: skip
    assert httpx.post(issuer.url + "/token", data=form).status_code == 200
    second = httpx.post(issuer.url + "/token", data=form)
    assert second.status_code == 401 and second.json()["error"] == "invalid_client"
    basic = base64.b64encode(b"gw:").decode()
    assert httpx.post(issuer.url + "/token", data=form, headers={"authorization": f"Basic {basic}"}).status_code == 401


def test_upstream_auth_without_auth_fails_the_start() -> None:
    server = {"name": "github", "upstream": "127.0.0.1:9000", "upstream_auth": {"kind": "static", "file": "/s"}}
    settings = parse({"servers": [server], "allow_anonymous": True})
    with pytest.raises(ConfigError, match="needs auth"):
        Upstream.from_settings(settings)


async def test_a_token_is_reused_no_longer_than_the_login_it_came_from(http, issuer, secret) -> None:
    """An IdP that issues tokens outliving the subject token: the cache still stops at the caller's login."""
    issuer.token_exchange.cap_to_subject = False
    issuer.token_exchange.add_target("gh", scopes=("repo",), ttl=3600)
    token = issuer.mint("alice", aud="https://gw.test", ttl=120)
    who = Principal(issuer.url, "alice", "alice", claims=jwt.decode(token, options={"verify_signature": False}))
    offset = 0.0
    tx = TokenExchanger(
        "github",
        TokenExchange.model_validate(
            {"kind": "token_exchange", "client_id": "gw", "client_secret_file": str(secret), "audience": "gh"}
        ),
        http,
        clock=lambda: time.time() + offset,
    )

    await _call(tx, who, token)
    offset = 100.0
    (_, (ev,)) = await _call(tx, who, token)
    assert ev.cached and issuer.token_exchange.exchanges == 1
    offset = 125.0  # past the login's exp, long before the issued token's
    (_, (ev,)) = await _call(tx, who, token)
    assert not ev.cached and issuer.token_exchange.exchanges == 2


def test_an_exchange_slower_than_envoys_message_timeout_fails_the_start(tmp_path) -> None:
    exchange = {"kind": "token_exchange", "client_id": "gw", "client_secret_file": "/s", "audience": "a"}
    exchange["timeout_s"] = 5
    server = {"name": "github", "upstream": "127.0.0.1:9000", "upstream_auth": exchange}
    auth = {"public_url": "https://gw.test", "issuers": [{"issuer": "https://idp.test"}]}
    settings = parse({"servers": [server], "auth": auth, "policy": {"directory": "/tmp"}})
    with pytest.raises(ConfigError, match=r"timeout_s: 5s must be below processor.message_timeout_ms \(5s\)"):
        Upstream.from_settings(settings)


async def test_the_warm_path_answers_only_the_callers_own_cached_token(http, issuer, secret) -> None:
    """Upstream.warm (no await, no event built once the unit has it): the caller's own cached token, else None and
    headers_for decides (exchanges or refuses); never another caller's token."""
    alice, alice_token = _who(issuer)
    bob, bob_token = _who(issuer, "bob")
    up = Upstream({"github": _tx(http, client_secret_file=str(secret), audience="gh")}, [])
    events: list[Any] = []

    def ctx(token: str) -> ExchangeContext:
        return ExchangeContext("ex", "", None, token, events.append)

    assert up.warm(alice, "github", ctx(alice_token)) is None  # nothing cached yet
    issued = await up.headers_for(alice, "github", ctx(alice_token))
    assert up.warm(alice, "github", ctx(alice_token)) == issued and events[-1].cached  # a plain callable: the event
    assert up.warm(bob, "github", ctx(bob_token)) is None
    other = Principal(issuer="https://other.test", subject="alice", username="alice")
    assert up.warm(other, "github", ctx(alice_token)) is None
    assert up.warm(None, "github", ctx(alice_token)) is None and up.warm(alice, "github", ctx("")) is None
    assert up.warm(alice, "demo", ctx(alice_token)) == {}  # no upstream_auth there
    assert await up.headers_for(bob, "github", ctx(bob_token)) != issued and issuer.token_exchange.exchanges == 2


async def test_a_token_request_attempts_no_import(http, issuer, secret) -> None:
    """httpcore looks for sniffio on every request: while it was not installed, each look searched sys.path again
    (six failed imports per exchange, about half of a cold exchange's CPU)."""

    class Spy(importlib.abc.MetaPathFinder):
        asked: list[str] = []

        def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
            self.asked.append(name)

    tx = _tx(http, client_secret_file=str(secret), audience="gh")
    await _call(tx, *_who(issuer))  # whatever is imported once, on first use
    spy = Spy()
    sys.meta_path.insert(0, spy)
    try:
        for user in ("bob", "carol"):
            await _call(tx, *_who(issuer, user))
    finally:
        sys.meta_path.remove(spy)
    assert spy.asked == [] and issuer.token_exchange.exchanges == 3


@pytest.mark.parametrize(
    ("token", "claims"),
    [
        pytest.param("a.eyJzdWIiOiJhbGljZSIsImFjdCI6eyJzdWIiOiJib3QifX0.c", {"sub": "alice", "act": {"sub": "bot"}}),
        pytest.param("opaque-token", {}, id="not-a-jwt"),
        pytest.param("a.!!!.c", {}, id="not-base64"),
        pytest.param("a.WzFd.c", {}, id="not-an-object"),
        pytest.param("a.bm90IGpzb24.c", {}, id="not-json"),
    ],
)
def test_unverified_claims_are_read_for_the_record_only(token: str, claims: dict[str, Any]) -> None:
    assert _unverified_claims(token) == claims
