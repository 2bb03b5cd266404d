"""doctor's upstream_auth checks against the development issuer's real token endpoint."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.authn.dev_issuer import DevIssuer
from extproc.settings import parse
from extproc.upstream.doctor import SUBJECT_TOKEN_ENV, check_upstream_auth


def _settings(issuer: DevIssuer, upstream_auth: dict) -> object:
    server = {"name": "github", "upstream": "127.0.0.1:9000", "upstream_auth": upstream_auth}
    auth = {"public_url": "http://127.0.0.1:8080", "issuers": [{"issuer": issuer.url}]}
    return parse({"servers": [server], "auth": auth, "policy": {"directory": "/tmp"}})


@pytest.fixture
def registered(issuer: DevIssuer, tmp_path: Path) -> Path:
    issuer.token_exchange.register_client("gw", secret="right")
    issuer.token_exchange.add_target("gh", scopes=("repo",))
    path = tmp_path / "secret"
    path.write_text("right")
    return path


def _exchange(secret: Path) -> dict:
    return {"kind": "token_exchange", "client_id": "gw", "client_secret_file": str(secret), "audience": "gh"}


def test_client_authentication_accepted_without_a_test_identity(issuer, registered, monkeypatch) -> None:
    monkeypatch.delenv(SUBJECT_TOKEN_ENV, raising=False)
    (f,) = check_upstream_auth(_settings(issuer, _exchange(registered)))
    assert f.status == "ok" and "client gw authenticated" in f.detail and issuer.token_exchange.exchanges == 0


def test_a_wrong_client_secret_fails(issuer, registered, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(SUBJECT_TOKEN_ENV, raising=False)
    wrong = tmp_path / "wrong"
    wrong.write_text("guess")
    (f,) = check_upstream_auth(_settings(issuer, _exchange(wrong)))
    assert f.status == "fail" and "invalid_client" in f.detail and "confidential client" in f.hint


def test_a_test_identity_is_exchanged_end_to_end(issuer, registered, monkeypatch) -> None:
    monkeypatch.setenv(SUBJECT_TOKEN_ENV, issuer.mint("doctor-test-user", aud="http://127.0.0.1:8080"))
    (f,) = check_upstream_auth(_settings(issuer, _exchange(registered)))
    assert f.status == "ok" and "exchanged" in f.detail and issuer.token_exchange.exchanges == 1
    monkeypatch.setenv(SUBJECT_TOKEN_ENV, issuer.mint("doctor-test-user", aud="x"))
    (f,) = check_upstream_auth(_settings(issuer, {**_exchange(registered), "audience": "not-registered"}))
    assert f.status == "fail" and "invalid_target" in f.detail


def test_a_missing_static_credential_fails(issuer, tmp_path) -> None:
    (f,) = check_upstream_auth(_settings(issuer, {"kind": "static", "file": str(tmp_path / "absent")}))
    assert f.status == "fail" and "absent" in f.detail
