"""``mcp-extproc sessions list | show | verify | export``: recorded sessions, from the store or the audit API."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.markup import escape

from extproc.cli._common import (
    ConfigOptional,
    DirOpt,
    JsonOpt,
    KeyOpt,
    TokenOpt,
    console,
    err_console,
    find_session,
    keyring_of,
    open_store,
    public_key,
    store_where,
)

if TYPE_CHECKING:
    from extproc.audit.remote import AuditApi
    from extproc.recording.store import Store

T = TypeVar("T")
app = typer.Typer(help="List, show and verify recorded MCP sessions.", no_args_is_help=True)
ApiOpt = Annotated[
    str | None, typer.Option("--api", help="audit service URL (e.g. https://gw/audit/) instead of a store")
]


def _remote(run: Callable[[ModuleType, AuditApi], T], api: str, token: str | None) -> T:
    """Run a sessions command through the audit API; its refusal (401, 404, …) is printed, exit 1."""
    from extproc.audit import remote

    try:
        return run(remote, remote.AuditApi(api, token))
    except remote.RemoteError as e:
        console.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(1) from None


@app.command("list")
def sessions_list(
    config: ConfigOptional = None,
    dir: DirOpt = None,
    json_out: JsonOpt = False,
    key_path: KeyOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """List recorded sessions (state: complete, open, or incomplete when a processor died mid-exchange)."""
    if api is not None:
        _remote(lambda r, a: r.remote_list(console, a, json_out), api, token)
        return
    from extproc.recording.replay import load_session
    from extproc.recording.report import sessions_table

    store = open_store(config, dir)
    key = public_key(config, key_path, dir)
    rows = sorted(
        (load_session(store, k, key).summary() for k in store.list_sessions()), key=lambda r: r["started"] or 0
    )
    if not rows:
        (err_console if json_out else console).print(
            f"no recorded sessions in {store_where(config, dir)}", markup=False
        )
    if json_out:
        print(json.dumps(rows, indent=2))
    elif rows:
        console.print(sessions_table(rows))


@app.command("show")
def sessions_show(
    session_id: str,
    config: ConfigOptional = None,
    dir: DirOpt = None,
    json_out: JsonOpt = False,
    key_path: KeyOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show every exchange of a session, JSON-RPC requests paired with their responses."""
    if api is not None:
        _remote(lambda r, a: r.remote_show(console, a, session_id, json_out), api, token)
        return
    from extproc.recording.report import print_session, session_doc

    key = public_key(config, key_path, dir)
    session = find_session(open_store(config, dir), session_id, key, keyring_of(config, dir))
    if json_out:
        print(json.dumps(session_doc(session), indent=2, ensure_ascii=False))
    else:
        print_session(console, session)


@app.command("export")
def sessions_export(
    session_id: str,
    out: Annotated[Path, typer.Option("--out", help="file to write (refused if it exists)")],
    config: ConfigOptional = None,
    dir: DirOpt = None,
    key_path: KeyOpt = None,
    fmt: Annotated[
        str, typer.Option("--format", help="bundle (the stored bytes, verifiable offline) or sep-3004 (audit records)")
    ] = "bundle",
) -> None:
    """Export one session as a self-contained file: a verifiable bundle, or SEP-3004 audit records."""
    from extproc.cli import _evidence

    _evidence.export(session_id, out, config, dir, key_path, fmt)


@app.command("verify")
def sessions_verify(
    session_id: Annotated[str | None, typer.Argument(help="the session (omit with --bundle)")] = None,
    config: ConfigOptional = None,
    dir: DirOpt = None,
    key_path: KeyOpt = None,
    allow_open: Annotated[
        bool, typer.Option("--allow-open", help="a stream still being written (no final manifest) is not a failure")
    ] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="verify an exported bundle (sessions export) instead of a store")
    ] = None,
    json_out: JsonOpt = False,
    event: Annotated[
        str | None,
        typer.Option("--event", help="SHA-256 of one event (an export's proof pointer): say where it is, or fail"),
    ] = None,
) -> None:
    """Check signatures, manifests and hash chains; exit 1 and name exactly what is wrong if anything is."""
    if bundle is not None:
        from extproc.cli import _evidence

        if session_id is not None or api is not None or dir is not None or event is not None:
            console.print("[red]--bundle verifies the file alone: give no session, --dir, --api or --event[/red]")
            raise typer.Exit(2)
        _evidence.verify_bundle(bundle, config, key_path, allow_open, json_out)
        return
    if session_id is None:
        console.print("[red]name a session, or give --bundle FILE[/red]")
        raise typer.Exit(2)
    if api is not None and event is not None:
        err_console.print("--event needs the store (--config or --dir), not --api")
        raise typer.Exit(2)
    if api is not None:
        if not _remote(lambda r, a: r.remote_verify(console, a, session_id, allow_open), api, token):
            raise typer.Exit(1)
        return
    key = public_key(config, key_path, dir)
    store = open_store(config, dir)
    session = find_session(store, session_id, key)
    for note in session.notes:
        console.print(f"[yellow]NOTE[/yellow] {note}", highlight=False)
    for why in session.unfinished:
        console.print(f"[yellow]OPEN[/yellow] {why}" if allow_open else f"[red]FAIL[/red] {why}", highlight=False)
    if session.problems or (session.unfinished and not allow_open):
        for p in session.problems:
            console.print(f"[red]FAIL[/red] {p}", highlight=False)
        raise typer.Exit(1)
    if event is not None:
        _verify_event(store, session.id, event, allow_open, key)
    signed = "signatures checked, " if key is not None else ""
    console.print(
        f"OK: {len(session.events)} events in {len(session.writers)} stream(s), {signed}every chain and manifest "
        f"intact; state {session.summary()['state']}; capture {session.capture() or '-'}"
    )


def _verify_event(store: Store, session: str, sha256: str, allow_open: bool, key: Any = None) -> None:
    """The event an export's proof pointer names: its line in the verified chain, the manifest covering it, and
    (with a transparency log) the checkpoint covering that manifest, proven by inclusion."""
    from extproc.export.proof import locate
    from extproc.recording.store import safe_key

    found = locate(store, safe_key(session), sha256)
    if found is None:
        console.print(f"[red]FAIL[/red] no event of session {session} hashes to {sha256}", highlight=False)
        raise typer.Exit(1)
    ev = found.event
    where = f"{found.writer} line {found.line} (seq {found.seq})"
    if found.segment is None:
        tag = "[yellow]OPEN[/yellow]" if allow_open else "[red]FAIL[/red]"
        console.print(f"{tag} event {sha256} at {where} is not covered by a signed manifest yet", highlight=False)
        if not allow_open:
            raise typer.Exit(1)
    else:
        console.print(
            f"EVENT {sha256}: {ev.get('type')} of exchange {ev.get('exchange')} at {where}, segment {found.segment}",
            highlight=False,
        )
        _verify_checkpoint(store, session, found.writer, found.segment, key)


def _verify_checkpoint(store: Store, session: str, writer: str, segment: int, key: Any) -> None:
    """The pointer's ``checkpoint`` (the follow-up proof event's): the segment's leaf proven against its log's
    checkpoint. Nothing to say without a transparency log; not yet checkpointed is a NOTE, a failed proof FAIL."""
    from extproc.evidence.proofs import log_keys, prove_session
    from extproc.evidence.tiles import blobs_for
    from extproc.recording.store import safe_key

    try:
        blobs = blobs_for(store)
    except TypeError:
        return
    if not log_keys(blobs):
        return  # no transparency log: the manifest's signature is the proof
    if key is None:
        console.print("[yellow]NOTE[/yellow] no public key: the checkpoint covering the segment is not checked")
        return
    proof = prove_session(store, blobs, safe_key(session), key)
    mine = [s for s in proof.segments if s.stream == safe_key(writer) and s.segment == segment]
    if not mine or "not in any log" in mine[0].problem:  # the log appends every interval: not a failure (yet)
        console.print(
            f"[yellow]NOTE[/yellow] segment {segment} of {writer} is in no checkpoint yet (the export's follow-up "
            "proofs event names it once one is stored)",
            highlight=False,
        )
        return
    s = mine[0]
    if s.problem:
        console.print(f"[red]FAIL[/red] checkpoint of segment {segment}: {escape(s.problem)}", highlight=False)
        raise typer.Exit(1)
    console.print(
        f"CHECKPOINT {s.log} size {s.size}: segment {segment} is leaf {s.index}, inclusion proven", highlight=False
    )
