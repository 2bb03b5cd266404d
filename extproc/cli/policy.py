"""``mcp-extproc policy check | explain | test | schema``: the tools a policy author runs before review."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape

from extproc.errors import ConfigError
from extproc.mcp.jsonrpc import loads
from extproc.policy.cases import Call, Who, load_cases, run_cases
from extproc.policy.compiled import ApprovalNeed, CompiledPolicy
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
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output on stdout.")]
_LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+): (?P<message>.*)$")


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


def _error_doc(lines: list[str]) -> dict[str, Any]:
    """Problems as JSON: file, line and message of each (file and line omitted when the problem has none)."""
    errors: list[dict[str, Any]] = []
    for line in lines:
        m = _LOCATED.match(line)
        errors.append({"file": m["file"], "line": int(m["line"]), "message": m["message"]} if m else {"message": line})
    return {"ok": False, "errors": errors}


def _fail(e: ConfigError, json_out: bool, code: int) -> typer.Exit:
    """Report every problem (stderr, or the JSON document on stdout) and return the exit to raise."""
    lines = str(e).splitlines()
    if json_out:
        typer.echo(json.dumps(_error_doc(lines), indent=2))
    else:
        err = _err()
        for line in lines:
            err.print(f"[red]error[/red] {escape(line)}")
    return typer.Exit(code)


def _load(
    directory: Path, servers: str | None, gateway: Path | None, json_out: bool = False, code: int = 1
) -> CompiledPolicy:
    try:
        return load_policy(directory, _known_servers(servers, gateway))
    except ConfigError as e:
        raise _fail(e, json_out, code) from None


@app.command()
def check(directory: Dir, servers: Servers = None, gateway: Gateway = None, json_out: Json = False) -> None:
    """Validate a policy directory; print every file:line error and exit 1, or a short summary."""
    policy = _load(directory, servers, gateway, json_out)
    effects = Counter(r.effect for r in policy.rules)
    redactions = {n for s in policy.servers for n in policy.redactor(s).rules if not n.startswith("builtin-")}
    if json_out:
        doc = {
            "ok": True,
            "directory": str(directory),
            "files": list(policy.files),
            "rules": {"allow": effects["allow"], "deny": effects["deny"], "approve": effects["approve"]},
            "redactions": sorted(redactions),
            "viewers": [v.name for v in policy.viewers],
            "servers": sorted(policy.servers),
            "fingerprint": policy.fingerprint,
        }
        typer.echo(json.dumps(doc, indent=2))
        return
    _out().print(
        f"[green]OK[/green] {escape(str(directory))}: {len(policy.files)} file(s), {len(policy.rules)} rules "
        f"({effects['allow']} allow, {effects['deny']} deny, {effects['approve']} approve), "
        f"{len(redactions)} redactions, "
        f"{len(policy.viewers)} viewer rules; servers: {', '.join(sorted(policy.servers)) or '-'}"
    )


def _json_option(value: str | None, what: str) -> dict[str, Any]:
    if not value:
        return {}
    try:
        parsed = loads(value)  # as the gateway reads bodies: NaN and Infinity are not JSON
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
    json_out: Json = False,
) -> None:
    """Show the decision for one call, the deciding rule, and why each candidate rule matched or not.

    Exit status: 0 allowed, 1 denied (by a rule, by default, or refused as invalid), 2 the question could not be
    asked (policy or options invalid).
    """
    policy = _load(directory, servers, gateway, json_out, code=2)
    who = Who(
        user=user,
        subject=subject,
        groups=[g.strip() for g in groups.split(",") if g.strip()],
        claims=_json_option(claims, "--claims"),
    ).principal()
    call = Call(method=method, tool=tool, uri=uri, prompt=prompt, arguments=_json_option(args, "--args")).mcp_call()
    decision, trace = explain_call(policy, who, server, call)
    source = next((t.source for t in trace if t.rule == decision.rule), "")
    budget = policy.budgets.get(decision.rule) if decision.allowed else None  # the allowing rule's limits
    if json_out:
        doc = {
            "allowed": decision.allowed,
            "invalid": decision.invalid,
            "call": describe_call(server, call),
            "caller": {"user": who.username, "groups": list(who.groups)},
            "rule": decision.rule,
            "source": source or None,
            "reason": decision.reason,
            "approval": _approval_doc(decision.approval),
            "considered": [
                {"rule": t.rule, "effect": t.effect, "source": t.source, "applies": t.matched, "why": t.why}
                for t in trace
            ],
        }
        if budget is not None:
            doc["limits"] = [
                {"calls": lim.calls, "per": lim.per, "by": ["caller", *lim.by], "limit": lim.describe()}
                for lim in budget.limits
            ]
            doc["on_store_error"] = "open" if budget.fail_open else "closed"
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        raise typer.Exit(0 if decision.allowed else 1)
    out = _out()
    verdict = "[bold green]ALLOW[/bold green]" if decision.allowed else "[bold red]DENY[/bold red]"
    if decision.approval is not None:
        verdict = "[bold yellow]APPROVAL REQUIRED[/bold yellow]"
    if decision.invalid:
        verdict += " [red](invalid request: the gateway answers 400)[/red]"
    out.print(f"{verdict} {escape(describe_call(server, call))}")
    out.print(f"  caller:  {escape(who.username)} (groups: {escape(', '.join(who.groups) or '-')})")
    out.print(f"  decided by: [bold]{escape(decision.rule)}[/bold]" + (f" ({escape(source)})" if source else ""))
    out.print(f"  reason:  {escape(decision.reason)}")
    if budget is not None:
        limits = "; ".join(lim.describe() for lim in budget.limits)
        store = "passes uncounted (open)" if budget.fail_open else "refused with 503 (closed)"
        out.print(f"  limits:  {escape(limits)}; over a limit: 429; counter store down: {store}")

    if (need := decision.approval) is not None:
        out.print(
            f"  approval: by {escape(need.text)} (never the caller), usable {need.ttl:g}s for {need.count} identical "
            "call(s) with these exact arguments"
        )
    if not trace:
        out.print("  no rule was evaluated (see the reason above)")
    else:
        out.print("  rules considered (deny rules first, then approve, then allow rules, each in policy order):")
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
    raise typer.Exit(0 if decision.allowed else 1)


def _approval_doc(need: ApprovalNeed | None) -> dict[str, Any] | None:
    """What an approve rule asks for, as ``explain --json`` shows it."""
    if need is None:
        return None
    return {"required": True, "approvers": need.text, "ttl_s": need.ttl, "count": need.count}


@app.command("test")
def test_cmd(directory: Dir, servers: Servers = None, gateway: Gateway = None, json_out: Json = False) -> None:
    """Run the cases of every *.tests.yaml in the directory; exit 1 if any fails or nothing can be run."""
    policy = _load(directory, servers, gateway, json_out)
    try:
        cases = load_cases(directory)
    except ConfigError as e:
        raise _fail(e, json_out, 1) from None
    if not cases:
        raise _fail(ConfigError(f"no test cases (*.tests.yaml) in {directory}"), json_out, 1)
    results = run_cases(policy, cases)
    failed = sum(not r.passed for r in results)
    if json_out:
        doc = {
            "ok": not failed,
            "passed": len(results) - failed,
            "failed": failed,
            "cases": [{"name": r.name, "source": r.source, "passed": r.passed, "detail": r.detail} for r in results],
        }
        typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        out = _out()
        for r in results:
            status = "[green]PASS[/green]" if r.passed else "[red]FAIL[/red]"
            out.print(f"{status} {escape(r.name)}  [dim]{escape(r.source)}[/dim]  {escape(r.detail)}")
        summary = f"{len(results) - failed} passed, {failed} failed"
        out.print(f"[red]{summary}[/red]" if failed else f"[green]{summary}[/green]")
    if failed:
        raise typer.Exit(1)


@app.command()
def schema(json_out: Json = True) -> None:
    """Print the JSON Schema of policy files (policies/schema.json is this output; it is always JSON)."""
    typer.echo(json.dumps(json_schema(), indent=2))
