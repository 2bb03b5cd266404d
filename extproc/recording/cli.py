"""`mcp-extproc store verify`: the whole store against every writer's digest chain."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

store_app = typer.Typer(help="Check the recording store as a whole.", no_args_is_help=True)

_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>[smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: float | None = None) -> float:
    """``2026-12-01T10:00:00Z`` (naive = UTC), ``1764583200`` (epoch seconds) or ``24h`` / ``7d`` / ``30m`` ago."""
    text = text.strip()
    if (m := _DURATION.match(text)) is not None:
        return (now if now is not None else time.time()) - float(m["n"]) * _UNITS[m["unit"]]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: give an ISO time (2026-12-01T10:00Z), epoch seconds or 24h/7d") from None
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


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
