"""``sessions export`` and ``sessions verify --bundle``: a session as a file anyone can check (extproc/evidence/)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from extproc.cli._common import console, err_console, open_store, public_key

if TYPE_CHECKING:
    from extproc.recording.store import Store


def _store_key(session_id: str, config: Path | None, directory: Path | None) -> tuple[Store, str]:
    from extproc.recording.units import unit_keys

    store = open_store(config, directory)
    keys = [k for k in unit_keys(store, session_id) if store.read_session(k)]
    if not keys:
        console.print(f"[red]no recorded session {session_id!r}[/red]")
        raise typer.Exit(1)
    if len(keys) > 1 and keys[0] != session_id:
        console.print(f"[red]{session_id!r} names recordings of several servers: {', '.join(keys)}[/red]")
        raise typer.Exit(1)
    return store, keys[0]


def export(
    session_id: str, out: Path, config: Path | None, directory: Path | None, key_path: Path | None, fmt: str
) -> None:
    """Write the session's bundle (or SEP-3004 records) to ``out``; an existing file is never overwritten."""
    from extproc.evidence import bundle

    if fmt not in ("bundle", "sep-3004"):
        console.print(f"[red]--format {fmt!r}: choose bundle or sep-3004[/red]")
        raise typer.Exit(2)
    store, key = _store_key(session_id, config, directory)
    pub = public_key(config, key_path, directory)
    if fmt == "bundle":
        doc = bundle.export(store, key, pub)
    else:
        from extproc.evidence import sep3004

        try:
            doc = sep3004.export(store, key, pub)
        except ValueError as e:  # the session does not verify, or a value the SEP's canonical form refuses
            console.print(f"[red]cannot export {key} as SEP-3004 records: {e}[/red]", highlight=False)
            raise typer.Exit(1) from None
    data = json.dumps(doc, indent=1, ensure_ascii=False).encode() + b"\n"
    try:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        console.print(f"[red]{out} exists; refusing to overwrite it[/red]")
        raise typer.Exit(1) from None
    except OSError as e:
        console.print(f"[red]cannot write {out}: {e.strerror or e}[/red]")
        raise typer.Exit(1) from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    err_console.print(f"wrote {fmt} of session {key} to {out} ({len(data)} bytes)", markup=False)


def verify_bundle(path: Path, config: Path | None, key_path: Path | None, allow_open: bool, json_out: bool) -> None:
    """Verify an exported bundle; exit 1 naming every finding, exit 2 when the file is not a bundle."""
    from extproc.evidence import bundle

    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        console.print(f"[red]cannot read bundle {path}: {e}[/red]", highlight=False)
        raise typer.Exit(2) from None
    key = public_key(config, key_path) if (key_path is not None or config is not None) else None
    try:
        verdict = bundle.verify(doc, key)
    except bundle.BundleError as e:
        console.print(f"[red]{path}: {e}[/red]", highlight=False)
        raise typer.Exit(2) from None
    if json_out:
        print(json.dumps({**verdict.to_json(), "notes": verdict.notes, "ok": verdict.ok(allow_open)}, indent=2))
    else:
        for note in verdict.notes:
            console.print(f"[yellow]NOTE[/yellow] {note}", highlight=False)
        for why in verdict.open:
            console.print(f"[yellow]OPEN[/yellow] {why}" if allow_open else f"[red]FAIL[/red] {why}", highlight=False)
        for finding in verdict.findings:
            console.print(f"[red]FAIL[/red] {finding}", highlight=False)
        if verdict.ok(allow_open):
            signed = f"signatures checked with key {verdict.key_id}, " if verdict.key_id else ""
            console.print(f"OK: {verdict.events} events, {signed}every chain, manifest and digest intact")
    if not verdict.ok(allow_open):
        raise typer.Exit(1)
