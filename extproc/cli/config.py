"""``mcp-extproc config schema``: gateway.yaml's JSON Schema, from the models that validate it."""

from __future__ import annotations

import json

import typer

app = typer.Typer(help="gateway.yaml itself: its JSON Schema.", no_args_is_help=True)


@app.command()
def schema() -> None:
    """Print the JSON Schema of gateway.yaml (for editors and CI; `policy schema` is the policies' one)."""
    from extproc.settings import json_schema

    typer.echo(json.dumps(json_schema(), indent=2))
