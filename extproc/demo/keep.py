"""`mcp-extproc demo --keep`: the whole local stack on loopback, kept up until Ctrl-C, with a live feed.

Parts: two sample MCP servers (the SDK's; `demo`, and `github` with stand-in tools the example policy partly
denies), the DEVELOPMENT-ONLY issuer with its login page, and what `up` starts from the config written here
(processor, Envoy, the audit service with the viewer's login). It prints what a newcomer needs to connect a
client, then one line per exchange from the processors' access log. Ctrl-C or SIGTERM stops everything, the
audit service included (its trail closed), and says where the recordings are.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.run import write_config
from extproc.launcher import Stack, can_connect, free_port, run_until, wait_until
from extproc.recording.manifest import generate_keys, load_public_key

# (user, groups, what the example policy gives them)
USERS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("alice", ("eng",), "engineer: demo tools, github list_*/get_*; delete_repository denied"),
    ("bob", (), "no groups: demo tools only; github tools denied"),
    ("auditor", ("security",), "security: may view every recorded session in the audit viewer"),
)
AUDITOR = USERS[2]
VIEWER_CLIENT = "audit-viewer"
READY = "demo stack up; Ctrl-C to stop everything. Live feed, one line per exchange:"


@dataclass(frozen=True, slots=True)
class KeepOptions:
    """Where `demo --keep` lives and listens; 0 for a port means a free one (tests)."""

    workdir: Path
    port: int = 8080  # the gateway: what MCP clients connect to
    issuer_port: int = 9400  # the dev issuer: what tokens name as their issuer
    token_ttl_s: int = 8 * 3600  # a working day: pasted tokens keep working


class DemoError(Exception):
    """The stack cannot start (a port taken, a part that died); the message says which and what to do."""


def _port(wanted: int, what: str, option: str) -> int:
    if wanted == 0:
        return free_port()
    if can_connect(f"127.0.0.1:{wanted}"):
        raise DemoError(f"port {wanted} ({what}) is in use: stop what runs there, or pass {option} N (0: any free)")
    return wanted


def _sample_server(name: str, port: int, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "extproc.demo.mcp_server", "--port", str(port), "--name", name, *extra]
    with open(log, "ab") as out:
        # Own process group: Ctrl-C reaches only `demo`, which stops the servers after the gateway.
        return subprocess.Popen(cmd, stdout=out, stderr=out, process_group=0)


@contextmanager
def _sample_servers(workdir: Path) -> Iterator[dict[str, int]]:
    ports = {"demo": free_port(), "github": free_port()}
    log = workdir / "servers.log"
    procs = [
        _sample_server("demo", ports["demo"], log),
        _sample_server("github", ports["github"], log, "--github-stand-in"),
    ]
    try:
        for name, port in ports.items():
            address = f"127.0.0.1:{port}"
            wait_until(lambda: can_connect(address), 30, f"the sample MCP server {name!r} on {address}")  # noqa: B023
        yield ports
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def client_snippets(url: str, token: str) -> tuple[str, str]:
    """(MCP Inspector, desktop client) connection snippets for ``url`` with a bearer ``token``."""
    inspector = (
        "npx @modelcontextprotocol/inspector  ->  Transport Type: Streamable HTTP, "
        f"URL: {url}, Authentication: header Authorization, value: Bearer {token}\n"
        f"  or: npx @modelcontextprotocol/inspector --cli {url} --transport http "
        f'--header "Authorization: Bearer {token}" --method tools/list'
    )
    entry = {"mcpServers": {"mcp-extproc-demo": {"url": url, "headers": {"Authorization": f"Bearer {token}"}}}}
    return inspector, json.dumps(entry, indent=2)


class AccessFeed:
    """Follows the gateway's log file and turns each processor access line (JSON) into one short line."""

    def __init__(self, log: Path) -> None:
        self.log = log
        self._offset = log.stat().st_size if log.exists() else 0
        self._partial = b""

    def new_lines(self) -> list[str]:
        """The feed lines for every access line written since the last call."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [line for raw in complete if (line := feed_line(raw)) is not None]


def feed_line(raw: bytes) -> str | None:
    """``HH:MM:SS user server method[ tool] decision (rule) status ms`` for a processor access line, else None."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("logger") != "mcp_extproc.access":
        return None
    clock = str(doc.get("time", ""))[11:19]
    call = " ".join(str(x) for x in (doc.get("mcp_method") or doc.get("detail") or "-", doc.get("tool")) if x)
    decision = doc.get("decision") or "-"
    rule = f" ({doc['rule']})" if doc.get("rule") else ""
    return (
        f"{clock} {doc.get('user') or '-':<8} {doc.get('server') or '-':<7} {call:<32} {decision}{rule} "
        f"{doc.get('status', '-')} {float(doc.get('duration_ms') or 0):.0f} ms"
    )


def _prepare(workdir: Path) -> None:
    """Keep keys and recordings of an earlier run (pasted tokens stay valid within their expiry)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "keys" / "signing.key").exists():
        generate_keys(workdir / "keys")
    for stale in ("gateway.log", "servers.log"):
        (workdir / stale).unlink(missing_ok=True)


def _banner(console: Console, stack: Stack, issuer: DevIssuer, opts: KeepOptions) -> None:
    def out(text: str = "") -> None:
        console.print(text, soft_wrap=True, highlight=False, markup=False)

    url = stack.url("demo")
    expires = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() + opts.token_ttl_s))
    out(f"MCP endpoint (Streamable HTTP): {url}")
    out(f"                                {stack.url('github')}  (stand-in: list_issues, delete_repository)")
    out(f"DEVELOPMENT-ONLY issuer: {issuer.url}  (mints tokens for anyone; never in production)")
    out()
    tokens: dict[str, str] = {}
    for user, groups, what in USERS:
        tokens[user] = issuer.mint(user, aud=stack.endpoint, groups=list(groups), ttl=opts.token_ttl_s)
        out(f"token for {user} (groups: {', '.join(groups) or 'none'}; {what}), expires {expires}:")
        out(tokens[user])
    out()
    audit = stack.settings.audit
    assert audit is not None
    user, groups, _ = AUDITOR
    out(f"audit viewer: {stack.endpoint}{audit.prefix}  log in as {user!r} with groups {', '.join(groups)!r}")
    inspector, desktop = client_snippets(url, tokens["alice"])
    out(f"MCP Inspector (as alice): {inspector}")
    (opts.workdir / "mcp.json").write_text(desktop + "\n")
    out(f"desktop MCP client (as alice), mcpServers entry (also in {opts.workdir / 'mcp.json'}):")
    out(desktop)
    out(f"logs: {opts.workdir / 'gateway.log'} (gateway, audit), {opts.workdir / 'servers.log'} (MCP servers)")
    out()
    out(READY)


def _after(console: Console, workdir: Path) -> None:
    """Say where the recordings are, and whether the store (the audit trail included) verifies."""
    from extproc.recording.audit import audit
    from extproc.recording.store.file import FileStore

    rec, pub = workdir / "recordings", workdir / "keys" / "signing.pub"
    if rec.is_dir():
        result = audit(FileStore(rec), load_public_key(pub))
        state = "verified" if not result.findings else f"{len(result.findings)} finding(s)!"
        console.print(f"store: {result.digests} digests, {result.sessions} sessions listed; {state}", highlight=False)
    console.print(
        f"recordings in {rec}\n"
        f"  mcp-extproc sessions list --dir {rec} --public-key {pub}\n"
        f"  mcp-extproc store verify --dir {rec} --public-key {pub}",
        soft_wrap=True,
        highlight=False,
    )


def keep_demo(opts: KeepOptions, console: Console) -> int:
    """Run the local stack until Ctrl-C/SIGTERM; returns the exit code."""
    from extproc.workers import StopSignal

    workdir = opts.workdir
    log = workdir / "gateway.log"
    failed = False
    try:
        port = _port(opts.port, "the gateway", "--port")
        issuer_port = _port(opts.issuer_port, "the dev issuer", "--issuer-port")
        _prepare(workdir)
        issuer = DevIssuer(workdir / "issuer", port=issuer_port)
    except (DemoError, OSError) as e:
        console.print(f"[red]demo failed:[/red] {e}", highlight=False)
        return 1
    stop = StopSignal()  # before anything starts: a Ctrl-C during start-up still stops what already runs
    issuer.start()
    try:
        with _sample_servers(workdir) as ports:
            audit: dict[str, Any] = {"port": free_port(), "client_id": VIEWER_CLIENT}
            config = write_config(
                workdir, ports["demo"], issuer.url, port=port, github_port=ports["github"], audit=audit
            )
            console.print("starting processor, audit service and Envoy …", highlight=False)
            stack = Stack(config=config, workdir=workdir, log_format="json")  # json: the feed reads the access lines
            feed = AccessFeed(log)
            try:
                stack.start(log=log)
                if not stop.requested:
                    _banner(console, stack, issuer, opts)

                def tick() -> None:
                    for line in feed.new_lines():
                        console.print(line, soft_wrap=True, highlight=False, markup=False)

                run_until(stack, lambda: stop.requested, tick)
            except (RuntimeError, TimeoutError) as e:
                console.print(f"[red]demo failed:[/red] {e} (see {log})", highlight=False)
                failed = True
            finally:
                console.print(
                    "stopping: Envoy drains, then the processor and the audit service close their recordings",
                    soft_wrap=True,
                )
                stack.stop()
    except TimeoutError as e:  # a sample server that did not start
        console.print(f"[red]demo failed:[/red] {e} (see {workdir / 'servers.log'})", highlight=False)
        failed = True
    finally:
        issuer.stop()
    console.print("everything stopped.")
    _after(console, workdir)
    return 1 if failed else 0
