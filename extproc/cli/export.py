"""``mcp-extproc export backfill``: OCSF events of a time range, again, from the recording store."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from extproc.cli._common import ConfigOptional, DirOpt, console, err_console, load_settings, open_store
from extproc.cli.store import parse_since

app = typer.Typer(help="SIEM export (OCSF): send a time range again from the store.", no_args_is_help=True)


@app.command("backfill")
def export_backfill(
    since: Annotated[str, typer.Option("--since", help="exchanges started at or after this time")],
    until: Annotated[str, typer.Option("--until", help="... and at or before this time (default: now)")] = "0s",
    config: ConfigOptional = None,
    dir: DirOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="write JSON lines here (default: standard output)")] = None,
    to_sinks: Annotated[
        bool, typer.Option("--to-sinks", help="send through the sinks of gateway.yaml's export: section instead")
    ] = False,
) -> None:
    """One OCSF API Activity event per recorded exchange (and audit access) in the range, proof pointers included."""
    import orjson

    from extproc.export.backfill import backfill
    from extproc.export.proof import covering

    lo, hi = parse_since(since), parse_since(until)
    if lo > hi:
        raise typer.BadParameter(f"--since ({since}) is after --until ({until})")
    store = open_store(config, dir)
    events = backfill(store, lo, hi, checkpoints=covering(store))
    if to_sinks:
        if config is None:
            raise typer.BadParameter("--to-sinks needs --config (the gateway.yaml whose export: section to use)")
        settings = load_settings(config)
        if settings.export is None:
            console.print(f"[red]{config} has no export: section[/red]", highlight=False)
            raise typer.Exit(2)
        sent, dropped = asyncio.run(_to_sinks(settings.export, events))
        err_console.print(f"backfill: {sent} events delivered, {dropped} dropped")
        if dropped:
            raise typer.Exit(1)
        return
    n = 0
    target = out.open("wb") if out is not None else sys.stdout.buffer
    try:
        for ev in events:
            target.write(orjson.dumps(ev) + b"\n")
            n += 1
    finally:
        if out is not None:
            target.close()
        else:
            target.flush()
    err_console.print(f"backfill: {n} events")


async def _to_sinks(config: Any, events: Any) -> tuple[int, int]:
    """Offer every event, waiting for room (a backfill may wait; the live path never does), then drain."""
    from extproc.export.exporter import Exporter

    exporter = Exporter.from_config(config)
    exporter.start()
    for ev in events:
        for sink in exporter.sinks:
            await sink.put(ev)
    await exporter.close(drain_within=60.0)
    sent = min(s.sent for s in exporter.sinks)
    dropped = sum(sum(s.dropped.values()) for s in exporter.sinks)
    return sent, dropped
