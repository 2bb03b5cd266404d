"""``mcp-extproc approvals list | approve | deny``: held calls, decided through the audit API.

The approver is whoever the token names (``--token`` or ``MCP_EXTPROC_TOKEN``): the audit service checks that they
are one of the rule's approvers and not the caller, signs the decision and puts it on the audit trail, exactly as
for the web viewer. Nothing here reads the signing key.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from extproc.cli._common import JsonOpt, TokenOpt

app = typer.Typer(help="Approve or deny calls that policy rules hold for a person's approval.", no_args_is_help=True)

ApiOpt = Annotated[str, typer.Option("--api", help="audit service URL, e.g. https://gw/audit/")]
ReasonOpt = Annotated[str, typer.Option("--reason", help="why (shown to the caller's auditors; required to deny)")]


def _fail(message: str, code: int = 1) -> NoReturn:
    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[red]{escape(message)}[/red]")
    raise typer.Exit(code)


def _call(method: str, api: str, path: str, token: str | None, params: dict[str, str]) -> Any:
    url = api.rstrip("/") + "/api/" + path
    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.request(method, url, params=params, headers=headers, timeout=30)
    except httpx.HTTPError as e:
        _fail(f"cannot reach {url}: {e}", 2)
    try:
        doc = r.json()
    except ValueError:
        _fail(f"{r.status_code}: {r.text[:200]}", 2)
    if r.status_code != 200:
        message = doc.get("error", {}).get("message", "") if isinstance(doc, dict) else ""
        _fail(f"{r.status_code}: {message or r.text[:200]}")
    return doc


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


@app.command("list")
def list_cmd(
    api: ApiOpt,
    token: TokenOpt = None,
    state: Annotated[str, typer.Option(help="pending, approved, denied, expired, used or all")] = "pending",
    json_out: JsonOpt = False,
) -> None:
    """Held calls you may see (pending ones by default), with the caller, tool and arguments as recorded."""
    rows = _call("GET", api, "approvals", token, {"state": state})["approvals"]
    if json_out:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    table = Table("id", "state", "caller", "server", "tool", "arguments", "requested", "approvers", "you may decide")
    for r in rows:
        table.add_row(
            r["id"], r["state"], escape(r["caller"]["username"]), escape(r["server"]), escape(r["tool"]),
            escape(r["arguments"][:80]), _when(r["requested_at"]), escape(r["approvers"]),
            "yes" if r["may_decide"] else "no",
        )  # fmt: skip
    Console(soft_wrap=True).print(table if rows else "no held calls")


def _decide(verb: str, api: str, approval_id: str, token: str | None, reason: str) -> None:
    doc = _call("POST", api, f"approvals/{approval_id}/{verb}", token, {"reason": reason})
    d = doc["decision"]
    until = f", usable until {_when(d['until'])} for {doc['count']} identical call(s)" if d["approved"] else ""
    typer.echo(f"{doc['id']}: {'approved' if d['approved'] else 'denied'} by {d['by']}{until}")


@app.command()
def approve(approval_id: str, api: ApiOpt, token: TokenOpt = None, reason: ReasonOpt = "") -> None:
    """Approve one held call: its identical retry by the same caller passes (once, unless the rule says count)."""
    _decide("approve", api, approval_id, token, reason)


@app.command()
def deny(approval_id: str, api: ApiOpt, reason: ReasonOpt, token: TokenOpt = None) -> None:
    """Deny one held call, saying why."""
    _decide("deny", api, approval_id, token, reason)
