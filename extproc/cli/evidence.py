"""``mcp-extproc evidence checkpoint | prove | consistency | verify``: the transparency log, checked offline.

Everything reads the tiles (the store's log folder, or ``--tiles``: a witness's copy) and needs the public key
that signs the checkpoints; nothing asks a running processor.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from extproc.cli._common import (
    ConfigOptional,
    DirOpt,
    JsonOpt,
    TokenOpt,
    config_in_use,
    console,
    load_settings,
    open_store,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from extproc.evidence.tiles import Blobs

app = typer.Typer(help="The transparency log over the recordings: checkpoints and proofs.", no_args_is_help=True)
KeyOpt = Annotated[
    Path | None,
    typer.Option("--public-key", help="Ed25519 public key (PEM) of the checkpoints; default: the configured key"),
]
TilesOpt = Annotated[
    Path | None, typer.Option("--tiles", help="a copy of the log folder (a witness's mirror) instead of the store")
]
TsaCaOpt = Annotated[
    Path | None, typer.Option("--tsa-ca", help="PEM roots the RFC 3161 timestamps must chain to (checks them)")
]


def _fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]{escape(message)}[/red]", highlight=False)
    return typer.Exit(code)


def _key(config: Path | None, key_path: Path | None, directory: Path | None) -> Ed25519PublicKey:
    """--public-key, else the transparency log's (or the recording's) signing key in the gateway.yaml in use."""
    from extproc.recording.manifest import load_public_key

    path = key_path
    if path is None and (used := config_in_use(config, directory)) is not None:
        rec = load_settings(used).recording
        tlog = rec.transparency_log
        path = (tlog.signing_key if tlog is not None else None) or rec.signing_key
    if path is None:
        raise _fail("no --public-key, and no signing key in a gateway.yaml: checkpoints cannot be checked", 2)
    try:
        return load_public_key(path)
    except (OSError, ValueError) as e:
        raise _fail(f"cannot read public key {path}: {e}", 2) from None


def _blobs(config: Path | None, directory: Path | None, tiles: Path | None) -> Blobs:
    from extproc.evidence.tiles import FileBlobs, blobs_for

    if tiles is not None:
        if not tiles.is_dir():
            raise _fail(f"no log folder {tiles}", 2)
        return FileBlobs(tiles)
    return blobs_for(open_store(config, directory))


def _tsa_time(token: bytes | None, note: bytes, tsa_ca: Path | None) -> tuple[str, str]:
    """(line to print, problem) for a checkpoint's timestamp."""
    from extproc.evidence.tsa import TsaError, load_certificates, verify_token

    if token is None:
        return ("no RFC 3161 timestamp", "no timestamp" if tsa_ca is not None else "")
    if tsa_ca is None:
        return ("RFC 3161 timestamp present (not checked: no --tsa-ca)", "")
    try:
        when = verify_token(token, note, load_certificates(tsa_ca))
    except (TsaError, OSError, ValueError) as e:
        return (f"RFC 3161 timestamp does not verify: {e}", str(e))
    return (f"existed no later than {when.isoformat()} (RFC 3161, chain to {tsa_ca})", "")


@app.command("checkpoint")
def checkpoint_command(
    config: ConfigOptional = None,
    dir: DirOpt = None,
    tiles: TilesOpt = None,
    key_path: KeyOpt = None,
    tsa_ca: TsaCaOpt = None,
    full: Annotated[
        bool,
        typer.Option(
            "--full",
            help="also: every earlier checkpoint consistent with the latest, every entry on its leaf, every logged "
            "segment still stored unchanged (reads the whole store)",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Each writer's latest checkpoint: signature, root recomputed from the tiles, trusted time."""
    from extproc.evidence.proofs import audit_log, check_checkpoint, log_keys

    if full and tiles is not None:
        raise _fail("--full reads the entries and the store: use --dir or --config, not --tiles", 2)
    public, blobs = _key(config, key_path, dir), _blobs(config, dir, tiles)
    store = open_store(config, dir) if full else None
    logs = log_keys(blobs)
    if not logs:
        raise _fail("no transparency log found (recording.transparency_log not set, or nothing published yet)")
    rows: list[dict[str, Any]] = []
    bad = False
    for log in logs:
        checked = check_checkpoint(blobs, log, public)
        cp = checked.checkpoint
        line, problem = _tsa_time(checked.token, checked.note, tsa_ca) if cp else ("", "")
        problems = checked.problems + ([problem] if problem else [])
        if full and not checked.problems:
            problems += audit_log(blobs, log, public, store)
        bad = bad or bool(problems)
        rows.append(
            {
                "log": log,
                "origin": cp.origin if cp else None,
                "size": cp.size if cp else None,
                "root": base64.b64encode(cp.root).decode() if cp else None,
                "time": line,
                "problems": problems,
            }
        )
    if json_out:
        console.print_json(json.dumps(rows))
    else:
        for r in rows:
            mark = "[red]FAIL[/red]" if r["problems"] else "[green]ok[/green]"
            console.print(f"{mark} {escape(str(r['origin']))} size {r['size']} root {r['root']}", highlight=False)
            if r["time"]:
                console.print(f"   {escape(r['time'])}", highlight=False)
            for p in r["problems"]:
                console.print(f"   [red]{escape(p)}[/red]", highlight=False)
    if bad:
        raise typer.Exit(1)


@app.command("prove")
def prove_command(
    session: Annotated[str, typer.Argument(help="session id (as `sessions list` shows it)")],
    config: ConfigOptional = None,
    dir: DirOpt = None,
    tiles: TilesOpt = None,
    key_path: KeyOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="write the proof bundle (for `evidence verify`)")] = None,
    json_out: JsonOpt = False,
) -> None:
    """An inclusion proof for every stored segment of a session, checked against its log's checkpoint."""
    from extproc.evidence.proofs import prove_session

    public, store = _key(config, key_path, dir), open_store(config, dir)
    blobs = _blobs(config, dir, tiles)
    proof = prove_session(store, blobs, session, public)
    if not proof.segments:
        raise _fail(f"no recorded session {session!r}")
    bundle = proof.bundle()
    if out is not None:
        out.write_text(json.dumps(bundle, indent=1) + "\n")
    if json_out:
        console.print_json(json.dumps(bundle))
    else:
        for s in proof.segments:
            where = f"leaf {s.index} of {s.log} (size {s.size})" if s.index >= 0 else ""
            mark = f"[red]FAIL[/red] {escape(s.problem)}" if s.problem else "[green]ok[/green]"
            console.print(f"{mark} stream {escape(s.stream)} segment {s.segment} {where}", highlight=False)
        good = sum(1 for s in proof.segments if not s.problem)
        console.print(f"{good}/{len(proof.segments)} segments proven in the transparency log", highlight=False)
    if not proof.ok:
        raise typer.Exit(1)


@app.command("consistency")
def consistency_command(
    old: Annotated[Path, typer.Argument(help="an earlier checkpoint (as a witness kept it)")],
    new: Annotated[Path | None, typer.Argument(help="a later checkpoint; default: the log's current one")] = None,
    config: ConfigOptional = None,
    dir: DirOpt = None,
    tiles: TilesOpt = None,
    key_path: KeyOpt = None,
) -> None:
    """Prove from the tiles that the log at NEW extends the log at OLD (nothing rewritten or removed)."""
    from extproc.evidence.note import NoteError, open_checkpoint
    from extproc.evidence.proofs import log_of, prove_consistency, verifier_for
    from extproc.evidence.tiles import MissingTile
    from extproc.evidence.tlog import CHECKPOINT

    public, blobs = _key(config, key_path, dir), _blobs(config, dir, tiles)
    try:
        old_note = old.read_bytes()
        old_cp = open_checkpoint(old_note, verifier_for(old_note, public))
        log = log_of(blobs, old_cp.origin)
        new_note = new.read_bytes() if new is not None else blobs.get(f"{log}/{CHECKPOINT}") or b""
        new_cp = open_checkpoint(new_note, verifier_for(new_note, public), old_cp.origin)
        result = prove_consistency(blobs, log, old_cp, new_cp)
    except KeyError:
        raise _fail("the log of that checkpoint is not in this store (deleted?)") from None
    except (NoteError, OSError, MissingTile) as e:
        raise _fail(str(e)) from None
    sizes = f"{old_cp.origin}: size {old_cp.size} -> {new_cp.size}"
    if not result.ok:
        raise _fail(f"INCONSISTENT {sizes}: the log was rewritten since the earlier checkpoint")
    console.print(f"[green]consistent[/green] {escape(sizes)} ({len(result.proof)} hashes)", highlight=False)


@app.command("witness")
def witness_command(
    api: Annotated[str, typer.Option("--api", help="audit service URL, e.g. https://gw.example/audit/")],
    mirror: Annotated[Path, typer.Option("--mirror", help="the witness's folder: checkpoints and tiles it kept")],
    key_path: Annotated[Path, typer.Option("--public-key", help="Ed25519 public key (PEM) of the checkpoints")],
    token: TokenOpt = None,
) -> None:
    """Follow every log through the audit API: keep each new checkpoint only if it extends the one kept before."""
    import httpx

    from extproc.evidence.tiles import FileBlobs
    from extproc.evidence.witness import follow

    public = _key(None, key_path, None)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    base = api.rstrip("/") + "/api/log"
    with httpx.Client(headers=headers, timeout=30) as client:

        def fetch(path: str) -> bytes | None:
            r = client.get(f"{base}/{path}" if path else base)
            if r.status_code == 404:
                return None
            if r.status_code != 200:
                raise _fail(f"{r.request.url}: HTTP {r.status_code} {r.text[:200]}")
            return r.content

        try:
            results = follow(fetch, FileBlobs(mirror), public)
        except httpx.HTTPError as e:
            raise _fail(f"audit API {api}: {e}") from None
    if not results:
        raise _fail("the audit API lists no transparency log")
    for f in results:
        sizes = f"{f.old.size if f.old else '-'} -> {f.new.size if f.new else '?'}"
        mark = "[red]FAIL[/red]" if f.problems else "[green]ok[/green]"
        console.print(f"{mark} {escape(f.log)}: size {sizes}, {f.fetched} new tiles", highlight=False)
        for p in f.problems:
            console.print(f"   [red]{escape(p)}[/red]", highlight=False)
    if any(f.problems for f in results):
        raise typer.Exit(1)


@app.command("verify")
def verify_command(
    file: Annotated[Path, typer.Argument(help="a proof bundle (`evidence prove --out`) or a checkpoint")],
    key_path: KeyOpt = None,
    config: ConfigOptional = None,
    tsa_ca: TsaCaOpt = None,
    token: Annotated[
        Path | None, typer.Option("--token", help="the checkpoint's RFC 3161 token; default: FILE.tsr if present")
    ] = None,
) -> None:
    """Offline: a bundle's proofs against its checkpoints, or a checkpoint's signature and trusted time."""
    from extproc.evidence.note import NoteError, open_checkpoint
    from extproc.evidence.proofs import verifier_for, verify_bundle

    public = _key(config, key_path, None)
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise _fail(f"cannot read {file}: {e.strerror or e}", 2) from None
    if raw.lstrip().startswith(b"{"):
        try:
            bundle: Any = json.loads(raw)
        except ValueError as e:
            raise _fail(f"{file} is not a proof bundle (JSON): {e}", 2) from None
        if not isinstance(bundle, dict):
            raise _fail(f"{file} is not a proof bundle (a JSON object)", 2)
        problems = verify_bundle(bundle, public)
        for p in problems:
            console.print(f"[red]{escape(p)}[/red]", highlight=False)
        if problems:
            raise typer.Exit(1)
        n = len(bundle.get("segments", []))
        console.print(f"[green]ok[/green] {n} segments of {escape(str(bundle.get('session')))} proven", highlight=False)
        return
    try:
        cp = open_checkpoint(raw, verifier_for(raw, public))
    except NoteError as e:
        raise _fail(f"checkpoint does not verify: {e}") from None
    token_path = token or file.with_name(file.name + ".tsr")
    stamp = (token_path.read_bytes() or None) if token_path.is_file() else None
    line, problem = _tsa_time(stamp, raw, tsa_ca)
    console.print(f"signed checkpoint of {escape(cp.origin)}, size {cp.size}", highlight=False)
    console.print(escape(line), highlight=False)
    if problem:
        raise typer.Exit(1)
