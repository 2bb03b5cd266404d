"""The dev-issuer and token CLI commands, and minting from the key directory without a server."""

from __future__ import annotations

from pathlib import Path

import jwt
import typer
from typer.testing import CliRunner

from extproc.authn.cli import dev_issuer, token
from extproc.authn.dev_issuer import DEFAULT_ISSUER, DevIssuer, mint_token
from extproc.authn.verify import Authenticator

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
