"""Identity through real Envoy: a real OIDC issuer on loopback (discovery + JWKS), the mcp SDK on both ends."""

from __future__ import annotations

import json
import secrets
import time

import httpx
import jwt
import pytest
import tokens
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway_parts import Gateway

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect, run_session
from extproc.launcher import wait_until

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _token(gw: Gateway, dev: DevIssuer, sub: str = "alice", groups: tuple[str, ...] = ("eng",), **kw) -> str:
    return dev.mint(sub, aud=gw.endpoint, groups=groups, **kw)


def _post(gw: Gateway, authorization: str | None, url: str | None = None, **headers: str) -> httpx.Response:
    h = {**ACCEPT, **headers}
    if authorization is not None:
        h["authorization"] = authorization
    return httpx.post(url or gw.url(), json=INIT, headers=h, timeout=10)


async def test_valid_token_session_works_and_is_attributed(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo")
    gw = start_authed([server])
    token = _token(gw, issuer, groups=("eng", "oncall"))
    result = await run_session(gw.url(), token=token, mode="legacy")
    assert result.echo["structuredContent"] == {"result": "hello"}
    async with connect(gw.url(), token=token, mode="legacy") as conn:
        who = await conn.client.call_tool("whoami", {})
        assert who.structured_content == {"user": "alice", "groups": "eng,oncall"}
    gw.stop()

    seen = server.seen()
    assert seen and all("authorization" not in r["headers"] for r in seen)  # no token passthrough
    server_sid = seen[-1]["headers"]["mcp-session-id"]
    assert result.session_id != server_sid  # the client only ever holds the bound id
    session = gw.session(server_sid)
    assert session.problems == []
    starts = [e for e in session.events if e["type"] == "exchange.start"]
    assert {e["principal"]["subject"] for e in starts} == {"alice"}
    assert starts[0]["principal"]["groups"] == ["eng", "oncall"]
    assert starts[0]["principal"]["issuer"] == issuer.url
    stored = b"".join(p.read_bytes() for p in gw.store.root.rglob("*.jsonl"))
    assert token.encode() not in stored and token.split(".")[2].encode() not in stored


OTHER_KEY = rsa.generate_private_key(65537, 2048)
HOSTILE = [
    pytest.param(lambda gw, iss: None, "", id="no-token"),
    pytest.param(lambda gw, iss: tokens.alg_none(iss, gw.endpoint), "algorithm 'none' not allowed", id="alg-none"),
    pytest.param(
        lambda gw, iss: tokens.hs256_with_public_key(iss, gw.endpoint), "'HS256' not allowed", id="hs256-pubkey"
    ),
    pytest.param(lambda gw, iss: _token(gw, iss, key=OTHER_KEY), "signature invalid", id="other-key-known-kid"),
    pytest.param(lambda gw, iss: _token(gw, iss, issuer="http://127.0.0.1:1/evil"), "issuer", id="wrong-issuer"),
    pytest.param(lambda gw, iss: iss.mint("alice", aud="https://elsewhere.test"), "audience", id="wrong-audience"),
    pytest.param(lambda gw, iss: _token(gw, iss, ttl=-3600), "expired", id="expired"),
    pytest.param(
        lambda gw, iss: _token(gw, iss, extra_claims={"nbf": int(time.time()) + 3600}), "not yet valid", id="nbf-future"
    ),
    pytest.param(lambda gw, iss: _token(gw, iss, extra_claims={"exp": None}), "'exp'", id="missing-exp"),
    pytest.param(lambda gw, iss: tokens.altered_payload(iss, gw.endpoint), "signature invalid", id="payload-altered"),
    pytest.param(lambda gw, iss: _token(gw, iss, kid="no-such-key"), "unknown key id", id="unknown-kid"),
    pytest.param(lambda gw, iss: "not-a-jwt", "not a well-formed JWT", id="garbage"),
    pytest.param(lambda gw, iss: "abc.d$f.ghi", "not a well-formed JWT", id="bad-base64"),
    pytest.param(lambda gw, iss: "a" * 20_000, "larger than 16384 bytes", id="oversized"),
]


@pytest.mark.parametrize(("make", "description"), HOSTILE)
def test_hostile_tokens_get_401_with_precise_challenge(start_mcp_server, start_authed, issuer, make, description):
    server = start_mcp_server("demo")
    gw = start_authed([server])
    token = make(gw, issuer)
    r = _post(gw, None if token is None else f"Bearer {token}")
    assert r.status_code == 401
    challenge = r.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    assert f'resource_metadata="{gw.endpoint}/.well-known/oauth-protected-resource"' in challenge
    if token is None:
        assert "error=" not in challenge  # RFC 6750: no error code when no credentials were sent
    else:
        assert 'error="invalid_token"' in challenge
        assert description in challenge, challenge
        assert issuer.keys.jwks()["keys"][0]["n"][:16] not in challenge  # no key material
    assert r.json()["error"]["code"] == -32001
    assert server.seen() == []  # nothing reached the MCP server


def test_jku_and_x5u_headers_are_never_followed(start_mcp_server, start_authed, issuer) -> None:
    gw = start_authed([start_mcp_server("demo")])
    trap = "http://127.0.0.1:1/attacker-jwks.json"
    genuine = _token(gw, issuer, headers={"jku": trap, "x5u": trap})
    assert _post(gw, f"Bearer {genuine}").status_code == 200  # verified against the issuer's JWKS only
    forged = _token(gw, issuer, key=OTHER_KEY, kid="attacker", headers={"jku": trap})
    assert _post(gw, f"Bearer {forged}").status_code == 401


def test_token_only_in_query_string_is_ignored(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo")
    gw = start_authed([server])
    r = _post(gw, None, url=f"{gw.url()}?access_token={_token(gw, issuer)}")
    assert r.status_code == 401
    assert server.seen() == []


def test_origin_not_allowed_gets_403(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo")
    gw = start_authed([server])
    r = _post(gw, f"Bearer {_token(gw, issuer)}", origin="https://evil.example")
    assert r.status_code == 403
    assert "origin" in r.json()["error"]["message"]
    assert server.seen() == []


def test_key_rotation_is_accepted_without_restart(start_mcp_server, start_authed, issuer) -> None:
    gw = start_authed([start_mcp_server("demo")], unknown_kid_refetch_seconds=1)
    assert _post(gw, f"Bearer {_token(gw, issuer)}").status_code == 200
    started = time.monotonic()
    new_kid = issuer.rotate()
    rotated = _token(gw, issuer)
    assert jwt.get_unverified_header(rotated)["kid"] == new_kid
    wait_until(lambda: time.monotonic() - started > 1.1, 5, "the refetch interval to pass")
    assert _post(gw, f"Bearer {rotated}").status_code == 200


def test_unknown_kid_causes_one_refetch_then_401(start_mcp_server, start_authed, issuer) -> None:
    gw = start_authed([start_mcp_server("demo")], unknown_kid_refetch_seconds=1)
    assert _post(gw, f"Bearer {_token(gw, issuer)}").status_code == 200
    started, before = time.monotonic(), issuer.jwks_fetches
    wait_until(lambda: time.monotonic() - started > 1.1, 5, "the refetch interval to pass")
    assert _post(gw, f"Bearer {_token(gw, issuer, kid='nope')}").status_code == 401
    assert issuer.jwks_fetches == before + 1


def test_jwks_down_after_warm_up_keeps_last_good_keys(start_mcp_server, start_authed, issuer) -> None:
    gw = start_authed([start_mcp_server("demo")])
    assert _post(gw, f"Bearer {_token(gw, issuer)}").status_code == 200
    issuer.set_jwks_down(True)
    assert _post(gw, f"Bearer {_token(gw, issuer, sub='bob')}").status_code == 200


def test_jwks_down_at_cold_start_gives_503_and_forwards_nothing(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo")
    issuer.set_jwks_down(True)
    gw = start_authed([server])
    r = _post(gw, f"Bearer {_token(gw, issuer)}")
    assert r.status_code == 503
    assert "identity provider" in r.json()["error"]["message"]
    assert server.seen() == []


def test_kid_flood_causes_at_most_a_handful_of_jwks_fetches(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo")
    gw = start_authed([server])
    before = issuer.jwks_fetches
    with httpx.Client(timeout=10) as http:
        for _ in range(500):
            token = _token(gw, issuer, kid=secrets.token_hex(8))
            r = http.post(gw.url(), json=INIT, headers={**ACCEPT, "authorization": f"Bearer {token}"})
            assert r.status_code == 401
    assert issuer.jwks_fetches - before <= 2
    assert server.seen() == []


def test_session_of_another_identity_is_refused_and_recorded(start_mcp_server, start_authed, issuer) -> None:
    server = start_mcp_server("demo")
    gw = start_authed([server])
    alice, bob = _token(gw, issuer, "alice"), _token(gw, issuer, "bob", groups=("ops",))
    r = _post(gw, f"Bearer {alice}")
    alice_session = r.headers["mcp-session-id"]
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    headers = {**ACCEPT, "mcp-session-id": alice_session, "mcp-protocol-version": "2025-11-25"}
    ok = httpx.post(gw.url(), json=ping, headers={**headers, "authorization": f"Bearer {alice}"}, timeout=10)
    assert ok.status_code == 200
    before = len(server.seen())
    stolen = httpx.post(gw.url(), json=ping, headers={**headers, "authorization": f"Bearer {bob}"}, timeout=10)
    assert stolen.status_code == 403
    assert stolen.json()["error"]["message"] == "session belongs to another identity"
    assert len(server.seen()) == before  # bob's request never reached the server
    gw.stop()
    events = [json.loads(x) for p in gw.store.root.rglob("*.jsonl") for x in p.read_bytes().splitlines()]
    denial = next(e for e in events if e["type"] == "exchange.end" and e["outcome"] == "denied")
    start = next(e for e in events if e["type"] == "exchange.start" and e["exchange"] == denial["exchange"])
    assert start["principal"]["subject"] == "bob"
    assert "SessionNotYours" in denial["detail"]


def test_protected_resource_metadata_is_served_and_readable_by_the_sdk(start_mcp_server, start_authed, issuer):
    from mcp.client.auth.utils import build_protected_resource_metadata_discovery_urls
    from mcp.shared.auth import ProtectedResourceMetadata

    gw = start_authed([start_mcp_server("demo")])
    unauthenticated = _post(gw, None)
    challenge_url = unauthenticated.headers["www-authenticate"].split('resource_metadata="')[1].rstrip('"')
    urls = build_protected_resource_metadata_discovery_urls(challenge_url, gw.url())
    r = httpx.get(urls[0], timeout=10)
    assert r.status_code == 200
    metadata = ProtectedResourceMetadata.model_validate_json(r.content)
    assert str(metadata.resource).rstrip("/") == gw.endpoint
    assert [str(u).rstrip("/") for u in metadata.authorization_servers] == [issuer.url]
    assert metadata.bearer_methods_supported == ["header"]


def test_untrusted_issuer_is_named_in_the_answer_and_with_the_trusted_ones_in_the_log(
    start_mcp_server, start_authed, issuer
) -> None:
    """A token minted from a stopped demo issuer: the client reads its token's issuer back, the log also names the
    trusted ones (configuration, never sent to the client)."""
    gw = start_authed([start_mcp_server("demo")])
    dead = "http://127.0.0.1:9/demo-issuer-gone"
    r = _post(gw, f"Bearer {_token(gw, issuer, issuer=dead)}")

    assert r.status_code == 401
    assert f"token issuer '{dead}' is not trusted" in r.headers["www-authenticate"]
    assert issuer.url not in r.headers["www-authenticate"] and issuer.url not in r.text
    line = f"WrongIssuer token issuer '{dead}' is not trusted; trusted: {issuer.url}"
    wait_until(lambda: line in gw.log.read_text(errors="replace"), 10, "the refusal in the processor's log")
