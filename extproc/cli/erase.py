"""``mcp-extproc erase``: crypto-shred one subject's recorded payloads; every proof keeps verifying."""

from __future__ import annotations

import asyncio
import getpass
import time
from pathlib import Path
from typing import Annotated

import typer

from extproc.cli._common import ConfigOpt, console, load_settings
from extproc.recording.config import Recording

ERASURES_SESSION = "mcp-extproc-erasures"  # the chained, signed record of every erasure


def erase_command(
    subject: Annotated[str, typer.Option("--subject", help="the caller to erase, as issuer#subject")],
    reason: Annotated[str, typer.Option("--reason", help="why (recorded, signed, shown where the payloads were)")],
    config: ConfigOpt = Path("gateway.yaml"),
    by: Annotated[str | None, typer.Option("--by", help="who erases (default: the local user)")] = None,
) -> None:
    """Destroy a subject's payload data keys (recording.encrypt_payloads: per_subject) and record a signed erasure:
    its payloads become unreadable in every store and viewer; chains, manifests and digests still verify."""
    issuer, sep, sub = subject.partition("#")  # an issuer URL has no fragment; a subject may hold a "#"
    if not sep or not issuer or not sub:
        console.print("[red]--subject must be issuer#subject (e.g. https://idp.example#alice)[/red]")
        raise typer.Exit(2)
    if not reason.strip():
        console.print("[red]--reason must say why[/red]")
        raise typer.Exit(2)
    rec = load_settings(config).recording
    if rec.encrypt_payloads != "per_subject":
        console.print(f"[red]{config}: recording.encrypt_payloads is not per_subject: there are no keys to erase[/red]")
        raise typer.Exit(2)
    ok, keys = asyncio.run(_erase(rec, subject, reason.strip(), by or getpass.getuser()))
    if not ok:
        console.print("[red]cannot record the erasure; nothing was erased[/red]")
        raise typer.Exit(1)
    console.print(f"erased {subject}: {len(keys)} data key(s) destroyed; recorded in session {ERASURES_SESSION}")


async def _erase(rec: Recording, subject: str, reason: str, by: str) -> tuple[bool, list[str]]:
    """The erasure is on the (chained, signed) record before any key is destroyed: never an unexplained loss."""
    from extproc.recording.setup import build_runtime
    from extproc.recording.shred import PayloadErased, build_keyring, erasure_record, subject_id

    keyring = build_keyring(rec)
    assert keyring is not None
    sid = subject_id(subject)
    existing = sorted(await asyncio.to_thread(keyring.store.keys, sid))
    runtime = build_runtime(rec)
    now = time.time()
    ev = PayloadErased(
        session=ERASURES_SESSION, exchange=f"erase-{int(now * 1000)}", time=now,
        subject=subject, subject_id=sid, keys=existing, by=by, reason=reason,
    )  # fmt: skip
    await runtime.recorder.start()
    try:
        ok = runtime.recorder.emit(ev)
        await runtime.recorder.flushed()
        ok = ok and runtime.recorder.healthy
    finally:
        await runtime.recorder.close()
        await runtime.store.close()
    if not ok:
        return False, []
    destroyed = await asyncio.to_thread(keyring.erase, subject)
    await asyncio.to_thread(keyring.store.put_erasure, sid, erasure_record(ev, runtime.recorder.signer))
    return True, destroyed[1]
