"""`mcp-extproc store verify`: the whole store against every writer's digest chain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from extproc.timespec import parse_time

store_app = typer.Typer(help="Check the recording store as a whole.", no_args_is_help=True)


def parse_since(text: str, now: float | None = None) -> float:
    """The shared time parser (``extproc.timespec``) as a CLI option: a bad value is a usage error."""
    try:
        return parse_time(text, now)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@store_app.command("verify")
def store_verify(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="gateway.yaml (for the store)")] = None,
    dir: Annotated[Path | None, typer.Option("--dir", help="recording directory (instead of --config)")] = None,
    public_key: Annotated[
        Path | None, typer.Option("--public-key", help="Ed25519 public key (PEM) digests and manifests are signed with")
    ] = None,
    since: Annotated[str | None, typer.Option("--since", help="only digests of periods ending after this time")] = None,
) -> None:
    """Walk every writer's digest chain; name each missing session, stream, segment and digest; exit 1 on any."""
    from extproc.cli import _public_key, _store, console
    from extproc.recording.audit import audit

    after = parse_since(since) if since is not None else None
    key = _public_key(config, public_key, dir)
    result = audit(_store(config, dir), key, after)
    for note in result.notes:
        console.print(f"[yellow]NOTE[/yellow] {note}", highlight=False)
    for finding in result.findings:
        console.print(f"[red]FAIL[/red] {finding}", highlight=False)
    if result.findings:
        raise typer.Exit(1)
    signed = "signatures checked, " if key is not None else "signatures NOT checked, "
    console.print(
        f"OK: {result.digests} digests, {result.sessions} sessions, {result.segments} segments listed; {signed}"
        "every listed segment present and intact"
    )
