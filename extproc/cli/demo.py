"""``mcp-extproc demo``: everything on loopback, one real MCP session through the gateway (``--keep``: left up)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from extproc.cli._common import console, setup_logging


def demo(
    workdir: Annotated[Path, typer.Option(help="where the demo keeps its files")] = Path(".demo"),
    keep: Annotated[
        bool, typer.Option("--keep", help="keep the whole stack up until Ctrl-C, with a live feed of exchanges")
    ] = False,
    port: Annotated[
        int | None, typer.Option(help="with --keep: the gateway's port (default 8080; 0: any free port)")
    ] = None,
    issuer_port: Annotated[
        int | None, typer.Option(help="with --keep: the dev issuer's port (default 9400; 0: any free port)")
    ] = None,
) -> None:
    """Start everything locally, run a real MCP client session through the gateway, print its recording; with
    --keep, leave the stack running (issuer, two MCP servers, gateway, audit viewer) and print how to connect."""
    if not keep:
        if port is not None or issuer_port is not None:
            console.print("[red]--port and --issuer-port only apply with --keep[/red]")
            raise typer.Exit(2)
        from extproc.demo.run import run_demo

        raise typer.Exit(run_demo(workdir.resolve(), console))
    from extproc.demo.keep import KeepOptions, keep_demo

    for name, value in (("--port", port), ("--issuer-port", issuer_port)):
        if value is not None and not 0 <= value <= 65535:
            console.print(f"[red]{name} must be a port number (0-65535), not {value}[/red]")
            raise typer.Exit(2)
    defaults = KeepOptions(workdir.resolve())
    opts = KeepOptions(
        defaults.workdir,
        port=defaults.port if port is None else port,
        issuer_port=defaults.issuer_port if issuer_port is None else issuer_port,
    )
    setup_logging()
    raise typer.Exit(keep_demo(opts, console))
