"""The program ``mcp-extproc``: assembles the command modules of this package into one typer app.

Each module holds one command group over the library; ``_common`` holds what they share (``--config``, the console,
config, store, key and session lookup). Nothing outside this package imports it (an import contract holds that).
"""

from __future__ import annotations

from typing import Annotated

import typer

from extproc import __version__
from extproc.cli import (
    approvals,
    audit,
    auth,
    config,
    demo,
    doctor,
    erase,
    evidence,
    export,
    grant,
    keys,
    pins,
    policy,
    redrive,
    serve,
    sessions,
    store,
)

app = typer.Typer(
    help="Envoy external processor that authenticates, authorizes and records MCP traffic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mcp-extproc {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Envoy external processor that authenticates, authorizes and records MCP traffic."""


app.add_typer(sessions.app, name="sessions")
sessions.app.command("redrive")(redrive.redrive_command)
app.command("erase")(erase.erase_command)
app.add_typer(keys.app, name="keys")
app.add_typer(policy.app, name="policy")
app.add_typer(store.app, name="store")
app.add_typer(audit.app, name="audit")
app.add_typer(grant.app, name="grant")
app.add_typer(approvals.app, name="approvals")
app.add_typer(config.app, name="config")
app.add_typer(pins.app, name="pins")
app.add_typer(evidence.app, name="evidence")
app.add_typer(export.app, name="export")
app.command("dev-issuer")(auth.dev_issuer)
app.command("token")(auth.token)
app.command("doctor")(doctor.doctor)
app.command()(serve.serve)
app.command("envoy-config")(serve.envoy_config)
app.command()(serve.up)
app.command()(demo.demo)


def main() -> None:
    """The console script's entry point (``mcp-extproc``)."""
    app()
