"""CLI commands of the DEVELOPMENT-ONLY issuer; the main CLI registers them (``app.command("dev-issuer")(...)``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

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
    issuer: Annotated[
        str | None, typer.Option(help="iss to put in the token, unchecked (default: the running dev issuer's URL).")
    ] = None,
) -> None:
    """Print a token signed by the DEVELOPMENT-ONLY issuer's key; without --issuer, that issuer must be running."""
    names = [g.strip() for g in groups.split(",") if g.strip()]
    iss = issuer if issuer is not None else _running_issuer(key_dir)
    typer.echo(mint_token(key_dir, sub, aud=aud, groups=names, ttl=ttl, issuer=iss))


def _fail(message: str) -> NoReturn:
    typer.secho(message, fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _running_issuer(key_dir: Path) -> str:
    """The URL the dev issuer of ``key_dir`` last served, once it answers there and publishes this key: a token
    from a stopped issuer (``make demo``'s, after it ended) would only get "token issuer is not trusted" later."""
    import httpx

    from extproc.authn.dev_issuer import KeyDir

    start = f"start one with: mcp-extproc dev-issuer --key-dir {key_dir}"
    if not (key_dir / "current").is_file():
        _fail(f"no development issuer keys in {key_dir}; {start} (it creates them), or pass --key-dir")
    keys = KeyDir(key_dir)
    url = keys.issuer
    where = f"{url} (from {key_dir / 'issuer.url'})" if (key_dir / "issuer.url").exists() else url
    try:
        doc = httpx.get(f"{url}/.well-known/openid-configuration", timeout=3).raise_for_status().json()
        published = httpx.get(doc["jwks_uri"], timeout=3).raise_for_status().json()["keys"]
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:
        _fail(
            f"the development issuer {where} is not running ({type(e).__name__}); {start} "
            "and mint again (`make demo` stops its issuer when it ends), or give --issuer to mint anyway"
        )
    if doc.get("issuer") != url or keys.current_kid not in {k.get("kid") for k in published if isinstance(k, dict)}:
        _fail(f"the issuer at {where} does not publish the key in {key_dir} ({keys.current_kid}); {start}")
    return url
