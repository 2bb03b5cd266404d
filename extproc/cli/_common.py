"""What the command modules share: the options declared once, the console, and the config, store, key and session
every command that reads recordings resolves the same way."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from rich.console import Console
from rich.markup import escape

from extproc import settings as settings_mod
from extproc.errors import ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from extproc.recording.replay import Session
    from extproc.recording.shred import Keyring
    from extproc.recording.store import Store

# One --config/-c for every command: required-with-a-default where the command needs a gateway.yaml, optional where
# a --dir can stand in for it.
_CONFIG = typer.Option("--config", "-c", help="gateway.yaml")
ConfigOpt = Annotated[Path, _CONFIG]
ConfigOptional = Annotated[Path | None, _CONFIG]
DirOpt = Annotated[Path | None, typer.Option("--dir", help="recording directory (instead of --config)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
KeyOpt = Annotated[
    Path | None, typer.Option("--public-key", help="Ed25519 public key (PEM) the manifests must be signed with")
]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="MCP_EXTPROC_TOKEN", help="bearer token for --api")]
LogFormatOpt = Annotated[
    str | None, typer.Option("--log-format", help="text or json (one object per line); default: log_format in config")
]

# Lines hold commands, paths and session ids people copy: never broken (soft_wrap; a terminal folds them visually
# and copies them whole). Into a pipe or file rich would assume 80 columns and fold table cells mid-word
# ("mallo/ry"): there, tables get the width they need instead.
_PIPE_WIDTH = 1000


def _console() -> Console:
    """The CLI's stdout console: soft-wrapped; as wide as needed when stdout is not a terminal."""
    tty = sys.stdout.isatty()
    return Console(soft_wrap=True, width=None if tty or os.environ.get("COLUMNS") else _PIPE_WIDTH)


console = _console()
err_console = Console(stderr=True, soft_wrap=True, highlight=False)  # notes beside --json output


def load_settings(path: Path) -> settings_mod.Settings:
    """The gateway.yaml at ``path``; a config error is printed (file:line) and exits 2."""
    try:
        return settings_mod.load(path)
    except ConfigError as e:
        console.print(f"[red]config error[/red]\n{escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None


def setup_logging(verbose: bool = False, log_format: str | None = "text") -> None:
    """Process logging for a long-running command."""
    from extproc.logs import setup

    setup("json" if log_format == "json" else "text", verbose)


def log_format_value(value: str) -> Literal["text", "json"]:
    """A --log-format value; anything else is a usage error (exit 2)."""
    if value == "text":
        return "text"
    if value == "json":
        return "json"
    console.print(f"[red]--log-format must be text or json, not {value!r}[/red]")
    raise typer.Exit(2)


def config_in_use(config: Path | None, directory: Path | None) -> Path | None:
    """The gateway.yaml a store command reads: --config, else ./gateway.yaml unless --dir names the recordings
    (then an unrelated ./gateway.yaml is not read behind the user's back)."""
    if config is not None:
        return config
    return Path("gateway.yaml") if directory is None and Path("gateway.yaml").exists() else None


def open_store(config: Path | None, directory: Path | None) -> Store:
    """The recording store of --dir, else of the gateway.yaml in use, else ./recordings."""
    from extproc.recording.setup import build_store
    from extproc.recording.store.file import FileStore

    if directory is not None:
        if not directory.is_dir():  # a typo must not look like "nothing recorded"
            console.print(f"[red]no recording directory {directory}[/red]", highlight=False)
            raise typer.Exit(2)
        return FileStore(directory)
    if (used := config_in_use(config, None)) is not None:
        return build_store(load_settings(used).recording)
    return FileStore(Path("recordings"))


def store_where(config: Path | None, directory: Path | None) -> str:
    """Where ``open_store`` looks, in words: what `sessions list` names when it finds nothing."""
    if directory is not None:
        return f"directory {directory}"
    if (used := config_in_use(config, None)) is None:
        return "directory recordings (no --dir, --config or ./gateway.yaml)"
    rec = load_settings(used).recording
    if rec.store == "s3" and rec.s3 is not None:
        return f"s3://{rec.s3.bucket}/{rec.s3.prefix} (recording.s3 in {used})"
    return f"directory {rec.directory} (recording.directory in {used})"


def public_key(config: Path | None, key_path: Path | None, directory: Path | None = None) -> Ed25519PublicKey | None:
    """The key manifests must be signed with: --public-key, else the public half of the configured signing key
    (of --config, or of ./gateway.yaml when no --dir is given). Says on stderr which key it used, and from where."""
    from extproc.recording.manifest import load_public_key

    path, source = key_path, "--public-key"
    used = config_in_use(config, directory) if path is None else None
    if used is not None:
        path, source = load_settings(used).recording.signing_key, f"recording.signing_key in {used}"
    if path is None:
        why = f"no --public-key and no recording.signing_key in {used}" if used else "no --public-key given"
        err_console.print(f"signatures not checked: {why}", markup=False)
        return None
    try:
        key = load_public_key(path)
    except (OSError, ValueError) as e:
        console.print(f"[red]cannot read public key {path}: {e}[/red]")
        raise typer.Exit(2) from None
    err_console.print(f"signatures checked with the key in {path} ({source})", markup=False)
    return key


def keyring_of(config: Path | None, directory: Path | None) -> Keyring | None:
    """The payload keyring of the gateway.yaml in use (``encrypt_payloads: per_subject``), else None."""
    from extproc.recording.shred import build_keyring

    used = config_in_use(config, directory)
    return build_keyring(load_settings(used).recording) if used is not None else None


def find_session(
    store: Store, session_id: str, key: Ed25519PublicKey | None = None, keyring: Keyring | None = None
) -> Session:
    """The recorded session a user names, by the MCP server's id or the gateway-bound one; none is exit 1."""
    from extproc.recording.replay import load_session
    from extproc.recording.units import run_windows, unit_keys

    # A unit key, or a server's session id (recorded under its server's unit), or a client's bound form of it.
    keys = unit_keys(store, session_id)
    if len(keys) > 1 and keys[0] != session_id:
        console.print(f"[red]{session_id!r} names recordings of several servers: {', '.join(keys)}[/red]")
        raise typer.Exit(1)
    for name in keys:
        try:
            session = load_session(store, name, key, keyring)
        except KeyError:
            continue
        before, after = run_windows(store.list_sessions(), name) if name.startswith("r-") else (None, None)
        session.notes += [f"this client's run of the window before: {before}"] if before else []
        session.notes += [f"this client's run of the window after: {after}"] if after else []
        return session
    console.print(f"[red]no recorded session {session_id!r}[/red]")
    raise typer.Exit(1)
