"""``mcp-extproc policy check | explain | test | schema``: the tools a policy author runs before review."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from extproc.errors import ConfigError
from extproc.policy.cases import Call, Who, load_cases, run_cases
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.engine import describe_call
from extproc.policy.engine import explain as explain_call
from extproc.policy.loader import load_policy
from extproc.policy.model import json_schema

app = typer.Typer(
    help="Check, explain and test MCP access policies.", no_args_is_help=True, pretty_exceptions_enable=False
)

Dir = Annotated[Path, typer.Argument(help="Policy directory (*.yaml; *.tests.yaml are test cases).")]
Servers = Annotated[
    str | None, typer.Option("--servers", help="Comma-separated server names from gateway.yaml (checks names).")
]
Gateway = Annotated[Path | None, typer.Option("--gateway", help="Read the server names from this gateway.yaml.")]


def _out() -> Console:
    return Console(highlight=False, soft_wrap=True)


def _err() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _known_servers(servers: str | None, gateway: Path | None) -> set[str] | None:
    known: set[str] | None = None
    if servers is not None:
        known = {s.strip() for s in servers.split(",") if s.strip()}
    if gateway is not None:
        known = (known or set()) | _gateway_servers(gateway)
    return known


def _gateway_servers(path: Path) -> set[str]:
    # Only the server names: a policy check should not fail on, say, the auth section of gateway.yaml.
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read gateway config: {e}") from None
    servers = doc.get("servers") if isinstance(doc, dict) else None
    if not isinstance(servers, list) or not all(
        isinstance(s, dict) and isinstance(s.get("name"), str) for s in servers
    ):
        raise ConfigError(f"{path}: servers: expected a list of servers with names")
    return {s["name"] for s in servers}


def _load(directory: Path, servers: str | None, gateway: Path | None) -> CompiledPolicy:
    try:
        return load_policy(directory, _known_servers(servers, gateway))
    except ConfigError as e:
        err = _err()
        for line in str(e).splitlines():
            err.print(f"[red]error[/red] {escape(line)}")
        raise typer.Exit(1) from None


@app.command()
def check(directory: Dir, servers: Servers = None, gateway: Gateway = None) -> None:
    """Validate a policy directory; print file:line errors and exit 1, or a short summary."""
    policy = _load(directory, servers, gateway)
    effects = Counter(r.effect for r in policy.rules)
    redactions = {n for s in policy.servers for n in policy.redactor(s).rules if not n.startswith("builtin-")}
    _out().print(
        f"[green]OK[/green] {escape(str(directory))}: {len(policy.files)} file(s), {len(policy.rules)} rules "
        f"({effects['allow']} allow, {effects['deny']} deny), {len(redactions)} redactions, "
        f"{len(policy.viewers)} viewer rules; servers: {', '.join(sorted(policy.servers)) or '-'}"
    )


def _json_option(value: str | None, what: str) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except ValueError as e:
        _err().print(f"[red]error[/red] {what} is not JSON: {escape(str(e))}")
        raise typer.Exit(2) from None
    if not isinstance(parsed, dict):
        _err().print(f"[red]error[/red] {what} must be a JSON object")
        raise typer.Exit(2)
    return parsed


@app.command()
def explain(
    directory: Dir,
    user: Annotated[str, typer.Option(help="Caller's username.")],
    server: Annotated[str, typer.Option(help="Server name (the /<server>/mcp path).")],
    method: Annotated[str, typer.Option(help="JSON-RPC method, e.g. tools/call.")] = "tools/call",
    groups: Annotated[str, typer.Option(help="Comma-separated groups.")] = "",
    tool: Annotated[str | None, typer.Option(help="Tool name (tools/call).")] = None,
    uri: Annotated[str | None, typer.Option(help="Resource URI (resources/read).")] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt name (prompts/get).")] = None,
    args: Annotated[str | None, typer.Option("--args", help="Tool arguments as a JSON object.")] = None,
    claims: Annotated[str | None, typer.Option(help="Token claims as a JSON object.")] = None,
    subject: Annotated[str | None, typer.Option(help="Caller's subject (defaults to the user).")] = None,
    servers: Servers = None,
    gateway: Gateway = None,
) -> None:
    """Show the decision for one call, the deciding rule, and why each candidate rule matched or not."""
    policy = _load(directory, servers, gateway)
    who = Who(
        user=user,
        subject=subject,
        groups=[g.strip() for g in groups.split(",") if g.strip()],
        claims=_json_option(claims, "--claims"),
    ).principal()
    call = Call(method=method, tool=tool, uri=uri, prompt=prompt, arguments=_json_option(args, "--args")).mcp_call()
    decision, trace = explain_call(policy, who, server, call)
    out = _out()
    verdict = "[bold green]ALLOW[/bold green]" if decision.allowed else "[bold red]DENY[/bold red]"
    source = next((t.source for t in trace if t.rule == decision.rule), "")
    out.print(f"{verdict} {escape(describe_call(server, call))}")
    out.print(f"  caller:  {escape(who.username)} (groups: {escape(', '.join(who.groups) or '-')})")
    out.print(f"  decided by: [bold]{escape(decision.rule)}[/bold]" + (f" ({escape(source)})" if source else ""))
    out.print(f"  reason:  {escape(decision.reason)}")
    if not trace:
        out.print("  no rule was evaluated (see the reason above)")
    else:
        out.print("  rules considered (deny rules first, then allow rules, each in policy order):")
        width = max(len(t.rule) for t in trace)
        src_width = max(len(t.source) for t in trace)
        for t in trace:
            mark = "[green]✓ applies[/green]" if t.matched else "[dim]✗ no     [/dim]"
            out.print(
                f"    {mark} {t.effect:<5} {escape(t.rule.ljust(width))}  "
                f"[dim]{escape(t.source.ljust(src_width))}[/dim]  {escape(t.why)}"
            )
    skipped = len(policy.rules) - len(trace)
    if skipped:
        out.print(f"  {skipped} other rule(s) target other servers, methods or tools")


@app.command("test")
def test_cmd(directory: Dir, servers: Servers = None, gateway: Gateway = None) -> None:
    """Run the cases of every *.tests.yaml in the directory; exit 1 if any fails."""
    policy = _load(directory, servers, gateway)
    out = _out()
    try:
        cases = load_cases(directory)
    except ConfigError as e:
        for line in str(e).splitlines():
            _err().print(f"[red]error[/red] {escape(line)}")
        raise typer.Exit(1) from None
    if not cases:
        _err().print(f"[red]error[/red] no test cases (*.tests.yaml) in {escape(str(directory))}")
        raise typer.Exit(1)
    results = run_cases(policy, cases)
    for r in results:
        status = "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]"
        out.print(f"{status} {escape(r.name)}  [dim]{escape(r.source)}[/dim]  {escape(r.detail)}")
    failed = sum(not r.passed for r in results)
    summary = f"{len(results) - failed} passed, {failed} failed"
    out.print(f"[red]{summary}[/red]" if failed else f"[green]{summary}[/green]")
    if failed:
        raise typer.Exit(1)


@app.command()
def schema() -> None:
    """Print the JSON Schema of policy files (policies/schema.json is this output)."""
    typer.echo(json.dumps(json_schema(), indent=2))
