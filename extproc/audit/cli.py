"""``mcp-extproc audit``: run the audit service; ``audit reindex`` rebuilds its session index from the store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="The audit service: recordings for the viewers the policy names.", invoke_without_command=True)
ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml")]


def _settings(config: Path):  # type: ignore[no-untyped-def]
    from extproc.cli import _load

    settings = _load(config)
    if settings.auth is None or settings.policy is None:
        typer.secho(f"{config}: the audit service needs auth: and policy: (viewers rules)", fg="red", err=True)
        raise typer.Exit(2)
    return settings


@app.callback()
def audit(ctx: typer.Context, config: ConfigOpt = Path("gateway.yaml"), verbose: bool = False) -> None:
    """Serve the audit API and web viewer (default prefix /audit/)."""
    ctx.obj = config
    if ctx.invoked_subcommand is not None:
        return
    from extproc.audit.service import serve_audit
    from extproc.cli import _logging

    _logging(verbose)
    asyncio.run(serve_audit(_settings(config)))


@app.command("reindex")
def reindex_command(ctx: typer.Context) -> None:
    """Rebuild the session index from the store (the store is the source of truth)."""
    from extproc.audit.service import index_path, reindex

    settings = _settings(ctx.obj)
    n = reindex(settings)
    typer.echo(f"indexed {n} sessions into {index_path(settings)}")
