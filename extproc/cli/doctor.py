"""``mcp-extproc doctor``: the checks of ``extproc.doctor``, printed one per line (or as one JSON document)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from extproc.cli._common import ConfigOpt
from extproc.doctor.run import run_checks

_MARK = {"ok": "[green] OK [/green]", "warn": "[yellow]WARN[/yellow]", "fail": "[red]FAIL[/red]", "skip": "SKIP"}


def doctor(
    config: ConfigOpt = Path("gateway.yaml"),
    json_out: Annotated[bool, typer.Option("--json", help="one JSON document for automation")] = False,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline", help="skip the running processor, metrics, upstream and audit checks (before start-up)"
        ),
    ] = False,
) -> None:
    """Check config, policies, issuers, store, keys, Envoy, processor, metrics, upstream MCP servers and the audit
    service; exit 1 if anything fails."""
    started = time.monotonic()
    checks = run_checks(config, running=not offline)
    failed = [c for c in checks if c.status == "fail"]
    if json_out:
        doc = {"ok": not failed, "seconds": round(time.monotonic() - started, 3), "checks": [asdict(c) for c in checks]}
        print(json.dumps(doc, indent=2))
    else:
        console = Console(highlight=False, soft_wrap=True)  # one line per check, however long
        for c in checks:
            hint = f"  [dim]fix: {c.hint}[/dim]" if c.hint and c.status in ("fail", "warn") else ""
            console.print(f"{_MARK[c.status]} {c.name}: {c.detail}{hint}")
        console.print(f"{len(failed)} failure(s)" if failed else "all checks passed")
    if failed:
        raise typer.Exit(1)
