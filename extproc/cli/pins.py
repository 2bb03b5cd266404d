"""``mcp-extproc pins list | show | diff | approve | reject``: the signed pins of what each server offers."""

from __future__ import annotations

import getpass
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from extproc.errors import ConfigError
from extproc.tools import pins

app = typer.Typer(help="Pinned tool, prompt and resource definitions: list, show, diff, approve, reject.",
                  no_args_is_help=True)  # fmt: skip
Config = Annotated[Path, typer.Option("--config", help="gateway.yaml (recording.directory, recording.signing_key)")]
ServerOpt = Annotated[str | None, typer.Option("--server", help="server name")]
ToolOpt = Annotated[str | None, typer.Option("--tool", help="tool or prompt name, or resource URI")]
console = Console(highlight=False, soft_wrap=True)


def _fail(message: str) -> NoReturn:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]{escape(message)}[/red]")
    raise typer.Exit(2)


def _setup(config: Path) -> tuple[Path, Path]:
    from extproc import settings as settings_mod
    from extproc.tools.surface import pins_directory

    try:
        s = settings_mod.load(config)
    except ConfigError as e:
        _fail(str(e))
    if s.recording.signing_key is None:
        _fail(f"{config}: no recording.signing_key: pins are signed with it (without it nothing is pinned)")
    assert s.recording.signing_key is not None
    return pins_directory(s), s.recording.signing_key


def _private(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        _fail(f"cannot load signing key {path}: {e}")
    if not isinstance(key, Ed25519PrivateKey):
        _fail(f"{path} is not an Ed25519 private key")
    return key


def _load(config: Path, server: str | None, tool: str | None) -> tuple[Path, Ed25519PrivateKey, list[pins.PinFile]]:
    directory, key_path = _setup(config)
    key = _private(key_path)
    loaded = pins.load_dir(directory, key.public_key())
    for p in loaded.problems:
        typer.echo(f"refused: {p}", err=True)
    found = [
        p for (s, _, n), p in sorted(loaded.pins.items())
        if (server is None or s == server) and (tool is None or n == tool)
    ]  # fmt: skip
    return directory, key, found


def _one(config: Path, server: str | None, tool: str | None) -> tuple[Path, Ed25519PrivateKey, pins.PinFile]:
    if server is None or tool is None:
        _fail("name the item: --server S --tool T")
    directory, key, found = _load(config, server, tool)
    if not found:
        _fail(f"no pin for {tool!r} on server {server!r} (pins are made when the gateway first lists it)")
    if len(found) > 1:
        _fail(f"{tool!r} on {server!r} names {len(found)} items ({', '.join(p.kind for p in found)})")
    return directory, key, found[0]


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")


def _state(p: pins.PinFile) -> str:
    return "pending" if p.candidate is not None else "pinned"


@app.command("list")
def list_(server: ServerOpt = None, tool: ToolOpt = None, config: Config = Path("gateway.yaml")) -> None:
    """Every pin: its state (pinned, or pending a person's decision), fingerprint and who approved it."""
    _, _, found = _load(config, server, tool)
    for p in found:
        pending = f"  pending {p.candidate.fingerprint[:19]}" if p.candidate is not None else ""
        typer.echo(
            f"{p.server}  {p.kind:17} {p.name}  {_state(p)}  {p.fingerprint[:19]}  by {p.approved_by} at "
            f"{_when(p.pinned_at)}{pending}"
        )


@app.command("show")
def show(server: ServerOpt = None, tool: ToolOpt = None, config: Config = Path("gateway.yaml")) -> None:
    """One pin as JSON: the pinned definition, a pending one, rejected fingerprints and the history."""
    _, _, pin = _one(config, server, tool)
    typer.echo(json.dumps(pin.model_dump(exclude={"sig"}), indent=2, ensure_ascii=False))


def flatten(node: Any, path: str = "") -> dict[str, str]:
    """JSON pointer -> the JSON text of each scalar (and of empty containers): what a JSON-aware diff compares."""
    if isinstance(node, dict) and node:
        out: dict[str, str] = {}
        for k in sorted(node):
            out.update(flatten(node[k], f"{path}/{str(k).replace('~', '~0').replace('/', '~1')}"))
        return out
    if isinstance(node, list) and node:
        return {k: v for i, item in enumerate(node) for k, v in flatten(item, f"{path}/{i}").items()}
    return {path or "/": json.dumps(node, ensure_ascii=True)}  # ASCII: invisible characters show as \\uHHHH


def diff_rows(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(pointer, old, new) for every value that differs; "" where a side has none."""
    a, b = flatten(old), flatten(new)
    return [(k, a.get(k, ""), b.get(k, "")) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


@app.command("diff")
def diff(server: ServerOpt = None, tool: ToolOpt = None, config: Config = Path("gateway.yaml")) -> None:
    """The pinned and the pending definition side by side, by JSON pointer (only what differs)."""
    _, _, pin = _one(config, server, tool)
    if pin.candidate is None:
        typer.echo(f"{pin.kind} {pin.name!r} on {pin.server}: no pending change ({pin.fingerprint})")
        return
    table = Table(title=f"{pin.kind} {pin.name} on {pin.server}", show_lines=True)
    table.add_column("field")
    table.add_column(f"pinned {pin.fingerprint[:19]} ({pin.approved_by})", overflow="fold")
    table.add_column(f"pending {pin.candidate.fingerprint[:19]} (seen {_when(pin.candidate.seen_at)})",
                     overflow="fold")  # fmt: skip
    for path, a, b in diff_rows(pin.definition, pin.candidate.definition):
        table.add_row(escape(path), escape(a), escape(b))
    console.print(table)


By = Annotated[str, typer.Option("--by", help="who decides (default: the login name); recorded in the signed pin")]
Fp = Annotated[str | None, typer.Option("--fingerprint", help="only if the pending definition has this fingerprint")]


@app.command("approve")
def approve(
    server: ServerOpt = None, tool: ToolOpt = None, by: By = "", fingerprint: Fp = None,
    config: Config = Path("gateway.yaml"),
) -> None:  # fmt: skip
    """The pending definition becomes the pin: lists show it again and calls pass (no reload needed)."""
    directory, key, pin = _one(config, server, tool)
    who = by or getpass.getuser()
    try:
        approved = pins.approve(pin, who, time.time(), fingerprint)
    except ValueError as e:
        _fail(str(e))
    path = pins.write(directory, key, approved)
    typer.echo(f"{pin.kind} {pin.name} on {pin.server}: {approved.fingerprint} approved by {who} ({path})")


@app.command("reject")
def reject(server: ServerOpt = None, tool: ToolOpt = None, by: By = "", config: Config = Path("gateway.yaml")) -> None:
    """The pending definition is refused for good: hidden (or blocking) whatever on_change says."""
    directory, key, pin = _one(config, server, tool)
    who = by or getpass.getuser()
    try:
        rejected = pins.reject(pin, who, time.time())
    except ValueError as e:
        _fail(str(e))
    path = pins.write(directory, key, rejected)
    typer.echo(f"{pin.kind} {pin.name} on {pin.server}: {rejected.rejected[-1]} rejected by {who} ({path})")
