"""``mcp-extproc grant create | list | revoke``: time-bound, signed access for one user to some tools of a server."""

from __future__ import annotations

import getpass
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from rich.console import Console

from extproc.cli._common import ConfigOpt
from extproc.errors import ConfigError
from extproc.policy import grant_files, grants

app = typer.Typer(help="Just-in-time grants: signed, time-bound access.", no_args_is_help=True)


def _fail(message: str) -> NoReturn:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]{message}[/red]")
    raise typer.Exit(2)


def _setup(config: Path, server: str | None = None) -> tuple[Path, Path]:
    from extproc import settings as settings_mod

    try:
        s = settings_mod.load(config)
    except ConfigError as e:
        _fail(str(e))
    if s.grants is None or s.recording.signing_key is None:
        _fail(f"{config}: no grants section (grants: {{directory: ...}}) or no recording.signing_key")
    if server is not None and s.discovery is None and s.server(server) is None:
        known = ", ".join(x.name for x in s.servers)
        _fail(f"{config}: server {server!r} is not defined in gateway.yaml (known: {known})")
    return s.grants.directory, s.recording.signing_key


def _private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        _fail(f"cannot load signing key {path}: {e}")
    if not isinstance(key, Ed25519PrivateKey):
        _fail(f"{path} is not an Ed25519 private key")
    return key


@app.command("create")
def create(
    user: Annotated[str, typer.Option("--user", help="the username the grant is for")],
    server: Annotated[str, typer.Option("--server", help="server name")],
    tools: Annotated[str, typer.Option("--tools", help="comma-separated tool names or globs, e.g. 'query_*'")],
    duration: Annotated[str, typer.Option("--for", help="how long: 90m, 2h, 1d (at most 7d)")],
    reason: Annotated[str, typer.Option("--reason", help="why (ticket, incident): recorded with every use")],
    approved_by: Annotated[str, typer.Option("--approved-by", help="who approved (not the user)")] = "",
    config: ConfigOpt = Path("gateway.yaml"),
) -> None:
    """Sign and write a grant; it is honoured from now until it expires, with no reload."""
    directory, key = _setup(config, server)
    approver = approved_by or getpass.getuser()
    try:
        seconds = grant_files.parse_duration(duration)
        names = [t.strip() for t in tools.split(",") if t.strip()]
        g, path = grant_files.create(
            directory, _private(key), user=user, server=server, tools=names,
            seconds=seconds, reason=reason, approved_by=approver, created_by=getpass.getuser(), now=time.time(),
        )  # fmt: skip
    except ValueError as e:
        msgs = (
            [f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()]
            if isinstance(e, ValidationError)
            else [str(e)]
        )
        _fail("grant refused: " + "; ".join(m.removeprefix(": ") for m in msgs))
    until = datetime.fromtimestamp(g.until, UTC).isoformat(timespec="seconds")
    typer.echo(f"{g.id}  {user} may use {', '.join(g.tools)} on {server} until {until} ({reason}); {path}")


@app.command("list")
def list_(config: ConfigOpt = Path("gateway.yaml"), all_: Annotated[bool, typer.Option("--all")] = False) -> None:
    """Grants in force (with --all: expired and revoked too), and any refused file."""
    from extproc.recording.manifest import load_public_key

    directory, key = _setup(config)
    loaded = grants.load_dir(directory, load_public_key(key))
    now = time.time()
    shown = [g for g in loaded.grants if all_ or g.not_before <= now < g.until]
    for g in sorted(shown, key=lambda g: g.until):
        state = "active" if g.not_before <= now < g.until else "expired"
        until = datetime.fromtimestamp(g.until, UTC).isoformat(timespec="seconds")
        tools = ",".join(g.source.tools)
        typer.echo(
            f"{g.id}  {state:7}  {g.user} -> {g.server} [{tools}] until {until}  {g.reason}  (by {g.approved_by})"
        )
    if all_:
        for gid in sorted(loaded.revoked):
            typer.echo(f"{gid}  revoked")
    for p in loaded.problems:
        typer.echo(f"refused: {p}", err=True)


@app.command("revoke")
def revoke(
    grant_id: Annotated[str, typer.Argument(help="the grant id (g-...)")],
    reason: Annotated[str, typer.Option("--reason")] = "",
    config: ConfigOpt = Path("gateway.yaml"),
) -> None:
    """End a grant now (one more entry in the signed revocation log; the next request no longer uses it)."""
    directory, key = _setup(config)
    if not (directory / f"{grant_id}.json").exists():
        _fail(f"no grant {grant_id} in {directory}")
    try:
        path = grant_files.revoke(directory, _private(key), grant_id, getpass.getuser(), reason, time.time())
    except ConfigError as e:
        _fail(f"not revoked: {e} (restore the revocation log from a backup, never re-create it)")
    typer.echo(f"{grant_id} revoked ({path})")
