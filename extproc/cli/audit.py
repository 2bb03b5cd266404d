"""``mcp-extproc audit``: run the audit service; ``audit reindex`` rebuilds its session index from the store."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from extproc.cli._common import ConfigOpt, ConfigOptional, load_settings, setup_logging

if TYPE_CHECKING:
    from extproc.settings import Settings

app = typer.Typer(help="The audit service: recordings for the viewers the policy names.", invoke_without_command=True)


def _settings(config: Path) -> Settings:
    settings = load_settings(config)
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

    setup_logging(verbose)
    asyncio.run(serve_audit(_settings(config)))


@app.command("reindex")
def reindex_command(
    ctx: typer.Context,
    config: ConfigOptional = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="processes that read a file store's sessions (from 2,000 changed sessions on); default: this "
            "machine's cores (100,000 sessions on an idle 2-core box: 24 s with 2, 40 s with 1). On cores busy "
            "with other work, 1 can be faster.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Rebuild the session index from the store (the store is the source of truth)."""
    from extproc.audit.service import index_target, reindex

    settings = _settings(config or ctx.obj)
    n = reindex(settings, workers or os.cpu_count() or 1)
    typer.echo(f"indexed {n} sessions into {index_target(settings)}")
