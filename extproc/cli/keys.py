"""``mcp-extproc keys generate``: the Ed25519 key pair recording manifests are signed with."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from extproc.cli._common import console

app = typer.Typer(help="Signing keys for recording manifests.", no_args_is_help=True)


@app.command("generate")
def keys_generate(out: Annotated[Path, typer.Option("--out", help="folder for signing.key and signing.pub")]) -> None:
    """Make an Ed25519 key pair: signing.key for recording.signing_key, signing.pub for auditors."""
    from extproc.recording.manifest import generate_keys, key_id, load_public_key

    try:
        key_path, pub_path = generate_keys(out)
    except FileExistsError as e:
        console.print(f"[red]{e}[/red]")
        raise typer.Exit(1) from None
    kid = key_id(load_public_key(pub_path))
    console.print(f"private key {key_path} (mode 0600; set recording.signing_key to it)")
    console.print(f"public key  {pub_path} (give to auditors: sessions verify --public-key)  key id {kid}")
