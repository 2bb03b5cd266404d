"""The dev issuer's login (development only): the code flow with PKCE S256 is checked like a real issuer would."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from extproc.audit.web import pkce_challenge
from extproc.authn.dev_login import MAX_CODES, DevLogin

VERIFIER = "v" * 50
REQUEST = {
    "response_type": "code",
    "client_id": "viewer",
    "redirect_uri": "http://127.0.0.1:8080/audit/callback",
    "state": "st",
    "nonce": "n1",
    "code_challenge": pkce_challenge(VERIFIER),
    "code_challenge_method": "S256",
}


def _login() -> DevLogin:
    return DevLogin(lambda sub, **kw: jwt.encode({"sub": sub, **kw, **kw.pop("extra_claims")}, "k" * 32))


def _code(login: DevLogin) -> str:
    status, doc = login.authorize({**REQUEST, "username": "alice", "groups": "team-a, ops"})
    assert status == 302
    query = parse_qs(urlsplit(doc["location"]).query)
    assert query["state"] == ["st"]
    return query["code"][0]


def _token_form(code: str, **over: str) -> dict[str, str]:
    return {"grant_type": "authorization_code", "code": code, "redirect_uri": REQUEST["redirect_uri"],
            "client_id": "viewer", "code_verifier": VERIFIER, **over}  # fmt: skip


def test_code_flow_issues_an_id_token_once() -> None:
    login = _login()
    code = _code(login)
    status, doc = login.token(_token_form(code))
    assert status == 200
    claims = jwt.decode(doc["id_token"], options={"verify_signature": False})
    assert claims["sub"] == "alice" and claims["aud"] == "viewer" and claims["groups"] == ["team-a", "ops"]
    assert claims["nonce"] == "n1"
    assert login.token(_token_form(code))[0] == 400  # single use


@pytest.mark.parametrize(
    "over",
    [
        pytest.param({"code_verifier": "w" * 50}, id="wrong-verifier"),
        pytest.param({"code_verifier": ""}, id="no-verifier"),
        pytest.param({"client_id": "other"}, id="other-client"),
        pytest.param({"redirect_uri": "http://127.0.0.1:9/x"}, id="other-redirect"),
        pytest.param({"grant_type": "password"}, id="other-grant"),
    ],
)
def test_token_refused_without_the_matching_pkce_verifier_client_and_redirect(over: dict[str, str]) -> None:
    login = _login()
    status, _ = login.token(_token_form(_code(login), **over))
    assert status == 400


@pytest.mark.parametrize(
    "over",
    [
        pytest.param({"code_challenge_method": "plain"}, id="plain-pkce"),
        pytest.param({"code_challenge": ""}, id="no-challenge"),
        pytest.param({"redirect_uri": "https://evil.example/cb"}, id="non-loopback-redirect"),
        pytest.param({"response_type": "token"}, id="implicit"),
    ],
)
def test_authorization_requests_without_pkce_or_off_loopback_are_refused(over: dict[str, str]) -> None:
    login = _login()
    assert login.login_page({**REQUEST, **over})[0] == 400
    assert login.authorize({**REQUEST, **over, "username": "a"})[0] == 400


def test_a_flood_of_sign_ins_keeps_at_most_max_codes_the_oldest_evicted() -> None:
    login = _login()
    codes = [_code(login) for _ in range(MAX_CODES + 10)]  # none exchanged: before, every one was kept a minute
    assert len(login._codes) == MAX_CODES
    assert login.token(_token_form(codes[0]))[1]["error"] == "invalid_grant"  # evicted, the oldest first
    assert login.token(_token_form(codes[-1]))[0] == 200  # the latest still works
