"""Signing-key cache: rotation, outages, cold start and the unknown-kid refetch rate limit."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from extproc.authn.config import IssuerConfig
from extproc.authn.dev_issuer import DevIssuer
from extproc.authn.errors import IssuerUnavailable, UnknownKeyId
from extproc.authn.jwks import KeySet, parse_jwks
from extproc.authn.verify import Authenticator

AUD = "https://gw.example.test"


def _bearer(token: str) -> str:
    return f"Bearer {token}"


async def test_warm_up_fetches_discovery_and_jwks_once(issuer: DevIssuer, auth: Authenticator) -> None:
    ks = auth.keysets[issuer.url]
    assert (ks.metrics.discovery_fetches, ks.metrics.jwks_fetches, issuer.jwks_fetches) == (1, 1, 1)
    for _ in range(5):
        await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD)))
    assert issuer.jwks_fetches == 1


async def test_unknown_kid_refetches_once_then_is_refused(issuer: DevIssuer, auth: Authenticator, clock) -> None:
    clock.advance(31)
    with pytest.raises(UnknownKeyId, match="no-such-key"):
        await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD, kid="no-such-key")))
    assert issuer.jwks_fetches == 2
    with pytest.raises(UnknownKeyId):
        await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD, kid="another-key")))
    assert issuer.jwks_fetches == 2  # within the interval: no second refetch
    assert auth.keysets[issuer.url].metrics.refetches_suppressed == 1


async def test_kid_flood_causes_at_most_a_handful_of_fetches(issuer: DevIssuer, auth: Authenticator, clock) -> None:
    valid = _bearer(issuer.mint("alice", aud=AUD))
    for batch in range(10):  # 500 tokens, 50 concurrent at a time, over 50 seconds of (fake) time
        flood = [_bearer(issuer.mint("x", aud=AUD, kid=f"random-{batch}-{i}")) for i in range(50)]
        results = await asyncio.gather(*(auth.authenticate(h) for h in flood), return_exceptions=True)
        assert all(isinstance(r, UnknownKeyId) for r in results)
        assert (await auth.authenticate(valid)).subject == "alice"  # real users unaffected
        clock.advance(5)
    # Warm-up fetched at t=1000; one refetch is allowed at t=1030 (batch 6), none again before t=1060.
    assert issuer.jwks_fetches - 1 == 1


async def test_rotation_is_picked_up_without_restart(issuer: DevIssuer, auth: Authenticator, clock) -> None:
    old = _bearer(issuer.mint("alice", aud=AUD))
    assert (await auth.authenticate(old)).subject == "alice"
    issuer.rotate()
    new = _bearer(issuer.mint("bob", aud=AUD))
    with pytest.raises(UnknownKeyId):  # right after a fetch the refetch is rate-limited ...
        await auth.authenticate(new)
    clock.advance(30)
    assert (await auth.authenticate(new)).subject == "bob"  # ... then one refetch finds the new key
    assert (await auth.authenticate(old)).subject == "alice"  # the previous key is still published


async def test_background_refresh_picks_up_new_keys(issuer: DevIssuer, make_auth, ticker, wait_for) -> None:
    auth = await make_auth(issuer.url, sleep=ticker.sleep)
    kid = issuer.rotate()
    ticker.tick()
    await wait_for(lambda: auth.keysets[issuer.url].has(kid))
    assert (await auth.authenticate(_bearer(issuer.mint("bob", aud=AUD)))).subject == "bob"
    assert issuer.jwks_fetches == 2


async def test_withdrawn_key_stops_cached_tokens(issuer: DevIssuer, auth: Authenticator) -> None:
    token = _bearer(issuer.mint("alice", aud=AUD))
    await auth.authenticate(token)
    issuer.rotate(keep_previous=False)
    assert await auth.keysets[issuer.url].refresh()
    with pytest.raises(UnknownKeyId):
        await auth.authenticate(token)


async def test_jwks_down_after_warm_up_keeps_last_good_keys(issuer: DevIssuer, auth: Authenticator, clock) -> None:
    issuer.set_jwks_down(True)
    ks = auth.keysets[issuer.url]
    assert not await ks.refresh()
    clock.advance(60)
    with pytest.raises(UnknownKeyId):  # refetch attempted, fails, keys kept
        await auth.authenticate(_bearer(issuer.mint("x", aud=AUD, kid="unknown")))
    assert (await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD)))).subject == "alice"
    assert ks.metrics.fetch_failures == 2


async def test_jwks_down_at_cold_start_is_unavailable_then_recovers(issuer: DevIssuer, make_auth, clock) -> None:
    issuer.set_jwks_down(True)
    auth = await make_auth(issuer.url)  # start() must not raise
    token = _bearer(issuer.mint("alice", aud=AUD))
    with pytest.raises(IssuerUnavailable) as caught:
        await auth.authenticate(token)
    assert caught.value.status == 503
    issuer.set_jwks_down(False)
    clock.advance(30)
    assert (await auth.authenticate(token)).subject == "alice"


async def test_unreachable_issuer_at_cold_start_is_unavailable(make_auth, issuer: DevIssuer) -> None:
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    auth = await make_auth(url)
    with pytest.raises(IssuerUnavailable):
        await auth.authenticate(_bearer(issuer.mint("alice", aud=AUD, issuer=url)))


# --- KeySet with a fake fetcher (no network) -------------------------------------------------------------


class FakeIdp:
    """Answers discovery and JWKS from dicts; raises for anything in ``failing``."""

    def __init__(self, issuer: str, jwks: dict[str, Any]) -> None:
        self.issuer = issuer
        self.docs = {
            f"{issuer}/.well-known/openid-configuration": {"issuer": issuer, "jwks_uri": f"{issuer}/jwks"},
            f"{issuer}/jwks": jwks,
        }
        self.failing: set[str] = set()
        self.calls: list[str] = []

    async def __call__(self, url: str) -> dict[str, Any]:
        self.calls.append(url)
        if url in self.failing:
            raise ConnectionError("boom")
        return self.docs[url]


async def test_discovery_naming_another_issuer_is_refused(issuer: DevIssuer) -> None:
    idp = FakeIdp("https://idp.test", issuer.keys.jwks())
    idp.docs["https://idp.test/.well-known/openid-configuration"]["issuer"] = "https://evil.test"
    ks = KeySet(IssuerConfig(issuer="https://idp.test"), idp)
    assert not await ks.refresh()
    assert idp.calls == ["https://idp.test/.well-known/openid-configuration"]


async def test_https_issuer_refuses_plain_http_jwks_uri(issuer: DevIssuer) -> None:
    idp = FakeIdp("https://idp.test", issuer.keys.jwks())
    idp.docs["https://idp.test/.well-known/openid-configuration"]["jwks_uri"] = "http://idp.test/jwks"
    ks = KeySet(IssuerConfig(issuer="https://idp.test"), idp)
    assert not await ks.refresh()


async def test_configured_jwks_uri_skips_discovery_and_failure_keeps_keys(issuer: DevIssuer) -> None:
    idp = FakeIdp("https://idp.test", issuer.keys.jwks())
    ks = KeySet(IssuerConfig(issuer="https://idp.test", jwks_uri="https://idp.test/jwks"), idp)
    assert await ks.refresh()
    idp.failing.add("https://idp.test/jwks")
    assert not await ks.refresh()
    assert ks.has(issuer.keys.current_kid)
    assert idp.calls == ["https://idp.test/jwks", "https://idp.test/jwks"]


def test_parse_jwks_skips_unusable_keys(issuer: DevIssuer) -> None:
    good = issuer.keys.jwks()["keys"][0]
    doc = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},  # symmetric: never trusted
            {**good, "kid": "enc", "use": "enc"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not-a-key",
            good,
        ]
    }
    assert list(parse_jwks(doc)) == [good["kid"]]
