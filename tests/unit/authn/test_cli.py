"""The dev-issuer and token CLI commands, and minting from the key directory without a server."""

from __future__ import annotations

from pathlib import Path

import jwt
import typer
from typer.testing import CliRunner

from extproc.authn.dev_issuer import DEFAULT_ISSUER, DevIssuer, mint_token
from extproc.authn.verify import Authenticator
from extproc.cli.auth import dev_issuer, token

AUD = "https://gw.example.test"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("dev-issuer")(dev_issuer)
    app.command("token")(token)
    return app


async def test_token_command_mints_a_token_the_gateway_accepts(issuer: DevIssuer, make_auth) -> None:
    auth: Authenticator = await make_auth(issuer.url)
    args = ["token", "--sub", "alice", "--groups", "eng, ops", "--aud", AUD, "--key-dir", str(issuer.keys.path)]
    result = CliRunner().invoke(_app(), [*args, "--ttl", "120"])
    assert result.exit_code == 0, result.output
    raw = result.stdout.strip()
    who = await auth.authenticate(f"Bearer {raw}")
    assert (who.subject, who.groups) == ("alice", ("eng", "ops"))
    claims = jwt.decode(raw, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 120


def test_mint_without_a_server_creates_the_key_dir(tmp_path: Path) -> None:
    raw = mint_token(tmp_path / "fresh", "bob", aud=AUD)
    claims = jwt.decode(raw, options={"verify_signature": False})
    assert (claims["iss"], claims["sub"], claims["aud"]) == (DEFAULT_ISSUER, "bob", AUD)
    assert (tmp_path / "fresh" / "current").exists()


def test_dev_issuer_help_says_development_only() -> None:
    result = CliRunner().invoke(_app(), ["dev-issuer", "--help"])
    assert result.exit_code == 0
    assert "DEVELOPMENT-ONLY" in result.output
    assert "--key-dir" in result.output and "--port" in result.output


def _token(key_dir: Path, *extra: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(_app(), ["token", "--aud", AUD, "--key-dir", str(key_dir), *extra])


def test_token_refuses_to_mint_from_an_issuer_that_is_not_running(tmp_path: Path, key_dir_template: Path) -> None:
    """After `make demo` its issuer is gone but .demo/issuer/issuer.url still names it: say so, and how to start
    one, instead of printing a token every gateway answers with "token issuer is not trusted"."""
    import shutil

    shutil.copytree(key_dir_template, tmp_path / "issuer")
    with DevIssuer(tmp_path / "issuer") as dead:
        url = dead.url
    result = _token(tmp_path / "issuer")
    assert result.exit_code == 2 and result.stdout == ""
    message = " ".join(result.stderr.split())
    assert f"the development issuer {url} (from {tmp_path / 'issuer' / 'issuer.url'}) is not running" in message
    assert f"mcp-extproc dev-issuer --key-dir {tmp_path / 'issuer'}" in message

    forced = _token(tmp_path / "issuer", "--issuer", "https://idp.example.test")  # explicit: minted unchecked
    assert forced.exit_code == 0, forced.output
    assert jwt.decode(forced.stdout.strip(), options={"verify_signature": False})["iss"] == "https://idp.example.test"


def test_token_refuses_an_issuer_serving_other_keys_and_a_missing_key_dir(issuer: DevIssuer, tmp_path: Path) -> None:
    other = tmp_path / "other"
    mint_token(other, "x", aud=AUD)  # another key directory ...
    (other / "issuer.url").write_text(issuer.url + "\n")  # ... naming the running issuer, which has other keys
    result = _token(other)
    assert result.exit_code == 2 and "does not publish the key in" in " ".join(result.stderr.split())

    missing = _token(tmp_path / "nope")
    assert missing.exit_code == 2 and "no development issuer keys in" in missing.stderr
    assert not (tmp_path / "nope").exists()  # nothing created on the way


def test_dev_issuer_exchange_options_register_a_client_and_a_target(issuer: DevIssuer, tmp_path: Path) -> None:
    import httpx
    import pytest

    from extproc.cli.auth import configure_exchange

    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    configure_exchange(issuer, [f"gw={secret}"], ["demo-api=repo:read, repo:write"])
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "audience": "demo-api",
            "subject_token": issuer.mint("alice", aud=AUD), "scope": "repo:read",
            "subject_token_type": "urn:ietf:params:oauth:token-type:access_token"}  # fmt: skip
    resp = httpx.post(issuer.url + "/token", data=form, auth=("gw", "s3cret"))
    assert resp.status_code == 200 and resp.json()["scope"] == "repo:read"
    with pytest.raises(typer.Exit):
        configure_exchange(issuer, ["gw"], [])
    with pytest.raises(typer.Exit):
        configure_exchange(issuer, [f"gw={tmp_path / 'absent'}"], [])
