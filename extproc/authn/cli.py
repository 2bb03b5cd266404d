"""CLI commands of the DEVELOPMENT-ONLY issuer; the main CLI registers them (``app.command("dev-issuer")(...)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from extproc.authn.dev_issuer import WARNING, DevIssuer, mint_token

KeyDirOption = Annotated[Path, typer.Option("--key-dir", help="Directory holding the issuer's signing keys.")]


def dev_issuer(
    host: Annotated[str, typer.Option(help="Loopback address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9400,
    key_dir: KeyDirOption = Path(".demo/issuer"),
    log_format: Annotated[str, typer.Option("--log-format", help="text or json")] = "text",
) -> None:
    """Serve a DEVELOPMENT-ONLY OIDC issuer (discovery + JWKS) until Ctrl-C. Never use in production."""
    from extproc.logs import setup

    setup("json" if log_format == "json" else "text")
    typer.secho(WARNING, fg=typer.colors.RED, bold=True, err=True)
    issuer = DevIssuer(key_dir, host=host, port=port)
    typer.echo(f"issuer {issuer.url}  jwks {issuer.url}/jwks  keys in {key_dir}", err=True)
    issuer.serve_forever()


def token(
    aud: Annotated[str, typer.Option(help="Audience: the gateway's resource identifier (its public URL).")],
    sub: Annotated[str, typer.Option(help="Subject (and preferred_username).")] = "alice",
    groups: Annotated[str, typer.Option(help="Comma-separated groups, e.g. eng,ops.")] = "",
    key_dir: KeyDirOption = Path(".demo/issuer"),
    ttl: Annotated[int, typer.Option(help="Lifetime in seconds.")] = 3600,
    issuer: Annotated[str | None, typer.Option(help="Override iss (default: URL the dev issuer last served).")] = None,
) -> None:
    """Print a token signed by the DEVELOPMENT-ONLY issuer's key (no running server needed)."""
    names = [g.strip() for g in groups.split(",") if g.strip()]
    typer.echo(mint_token(key_dir, sub, aud=aud, groups=names, ttl=ttl, issuer=issuer))
