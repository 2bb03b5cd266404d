"""``mcp-extproc sessions redrive``: re-send a recorded session against a staging MCP server, on the audit trail."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from extproc.authn.principal import Principal
from extproc.cli._common import ConfigOptional, console, find_session, load_settings, open_store


def redrive_command(
    session_id: str,
    to: Annotated[
        str, typer.Option("--to", help="the MCP server to re-drive against (a staging copy), e.g. http://host/mcp")
    ],
    allow_tools: Annotated[
        str, typer.Option("--allow-tools", help="comma-separated tools that may be called again (side effects!)")
    ] = "",
    config: ConfigOptional = None,
    dir: Annotated[
        Path | None, typer.Option("--dir", help="recording directory (no audit trail without --config)")
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", envvar="MCP_EXTPROC_TOKEN", help="bearer token for --to")
    ] = None,
) -> None:
    """Re-send a session's recorded requests, in order, in a fresh session; print per call identical or the diff.

    Only requests the gateway allowed when recorded and today's policy (from --config) allows you are sent; every
    other one is listed as skipped, with the reason."""
    import getpass

    from extproc.audit.redrive import redrive
    from extproc.errors import ConfigError
    from extproc.policy.loader import load_policy

    session = find_session(open_store(config, dir), session_id)
    allowed = {t.strip() for t in allow_tools.split(",") if t.strip()}
    user = getpass.getuser()
    who = Principal(issuer="local-cli", subject=user, username=user)
    policy = None
    if config is not None:
        settings = load_settings(config)
        if settings.policy is not None:
            try:
                policy = load_policy(settings.policy.directory, {s.name for s in settings.servers})
            except ConfigError as e:
                console.print("[red]policy error: nothing re-driven[/red]")
                console.print(str(e), highlight=False, markup=False)
                raise typer.Exit(2) from None
    if config is not None:  # on the audit trail before anything is sent
        query = {"to": to[:200], "allow_tools": ",".join(sorted(allowed))[:200]}
        if not asyncio.run(_record(config, who, session.id, query)):
            console.print("[red]cannot write the audit trail; nothing re-driven[/red]")
            raise typer.Exit(1)
    console.print(f"session {session.id}: recorded at capture level {session.capture() or '-'}", highlight=False)
    outcomes = redrive(session, to, allowed, token, policy=policy, operator=who)
    for o in outcomes:
        console.print(o.line(), highlight=False, markup=False, soft_wrap=True)
    if any(o.verdict in ("differs", "failed") for o in outcomes):
        raise typer.Exit(1)


async def _record(config: Path, who: Principal, target: str, query: dict[str, str]) -> bool:
    from extproc.audit.trail import AuditTrail
    from extproc.recording.setup import build_runtime

    runtime = build_runtime(load_settings(config).recording)
    await runtime.recorder.start()
    try:
        ok = AuditTrail(runtime.recorder).record(who, "local", "redrive", target, query, "ok", 0)
        await runtime.recorder.flushed()
        return ok and runtime.recorder.healthy
    finally:
        await runtime.recorder.close()
        await runtime.store.close()
