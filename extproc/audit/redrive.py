"""Re-drive a recorded session against a given MCP server (a staging copy), for forensics.

The recorded client requests are sent again, in order, in a fresh session; each response is compared with the
recorded one (a JSON diff of ``result``/``error``). A recording is what a client chose to send, refused requests
included: only requests the gateway allowed when recorded (its ``policy.decision`` events) and today's policy
allows the operator are re-sent, with headers derived here (never the recorded client's ``mcp-*`` or routing
headers) and, for stateless runs, without the recorded server's sealed ``requestState``. Tool calls can have side
effects: they are skipped unless their tool is listed explicitly. Only an explicit ``--to`` URL is ever contacted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from mcp.shared.inbound import encode_header_value, mcp_param_headers, x_mcp_header_map

from extproc.authn.principal import Principal
from extproc.mcp.methods import NAME_BEARING
from extproc.mcp.protocol import META_VERSION, METHOD_HEADER, NAME_HEADER, VERSION_HEADER, classify
from extproc.mcp.sse import SseParser
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.enforce import authorize
from extproc.recording.replay import Session, pair_messages

_ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
_VOLATILE = {"_meta"}  # per-call metadata (timestamps, progress tokens) is not a difference in behaviour


Verdict = Literal["identical", "differs", "skipped", "failed", "sent"]


@dataclass(slots=True)
class Outcome:
    """One re-sent request: identical, different (with the paths that differ), skipped or failed."""

    method: str
    name: str
    verdict: Verdict  # sent: a notification, nothing to compare
    differences: list[str] = field(default_factory=list)

    def line(self) -> str:
        what = f"{self.method}{f' {self.name}' if self.name else ''}"
        tail = "".join(f"\n    {d}" for d in self.differences)
        return f"{self.verdict:9} {what}{tail}"


def json_diff(old: Any, new: Any, path: str = "") -> Iterator[str]:
    """Where two JSON documents differ, as JSON-pointer-like paths with both values (shortened)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new), key=str):
            if k in _VOLATILE:
                continue
            if k not in new:
                yield f"{path}/{k}: removed (was {_short(old[k])})"
            elif k not in old:
                yield f"{path}/{k}: added {_short(new[k])}"
            else:
                yield from json_diff(old[k], new[k], f"{path}/{k}")
    elif isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            yield from json_diff(a, b, f"{path}/{i}")
    elif old != new:
        yield f"{path or '/'}: {_short(old)} -> {_short(new)}"


def _short(v: Any, limit: int = 120) -> str:
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _answer(r: httpx.Response, msg_id: Any) -> dict[str, Any] | None:
    """The JSON-RPC response to ``msg_id`` in a JSON or SSE body."""
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        parser = SseParser()
        messages = []
        for ev in parser.feed(r.content + b"\n\n"):
            try:
                messages.append(json.loads(ev.data))
            except ValueError:
                continue
    else:
        try:
            doc = r.json()
        except ValueError:
            return None
        messages = doc if isinstance(doc, list) else [doc]
    return next((m for m in messages if isinstance(m, dict) and "method" not in m and m.get("id") == msg_id), None)


def recorded_verdicts(session: Session) -> dict[tuple[str, str], str | None]:
    """Per (exchange, JSON id) of a client message: None when the gateway let it through when recorded, else why
    not. Only recorded ``policy.decision`` events count: one denied element refused the whole body, an exchange
    that ended ``denied`` was refused, and a message without a decision of its own was never shown to be allowed."""
    decisions: dict[str, list[dict[str, Any]]] = {}
    refused: set[str] = set()
    for ev in session.events:
        kind, exchange = ev.get("type"), str(ev.get("exchange", ""))
        if kind == "policy.decision":
            decisions.setdefault(exchange, []).append(ev)
        elif kind == "exchange.end" and ev.get("outcome") == "denied":
            refused.add(exchange)
    out: dict[tuple[str, str], str | None] = {}
    for exchange, evs in decisions.items():
        denied = next((d for d in evs if not d.get("allowed")), None)
        for d in evs:
            key = (exchange, json.dumps(d.get("message_id")))
            if denied is not None:
                out[key] = f"refused when recorded (rule {denied.get('rule')!r}: {denied.get('call', '')})"
            elif exchange in refused:
                out[key] = "refused when recorded (the exchange ended denied)"
            else:
                out.setdefault(key, None)
    return out


def _server_of(session: Session) -> dict[str, str]:
    return {
        str(ev["exchange"]): str(ev.get("server", "")) for ev in session.events if ev.get("type") == "exchange.start"
    }


def _stateless(req: dict[str, Any]) -> bool:
    return classify({}, [req]).stateless


def _without_request_state(req: dict[str, Any]) -> dict[str, Any]:
    """A stateless request without ``params.requestState``: that state was sealed by the recorded server for the
    recorded caller, and is never handed to another server or in another's name."""
    params = req.get("params")
    if not isinstance(params, dict) or "requestState" not in params:
        return req
    return {**req, "params": {k: v for k, v in params.items() if k != "requestState"}}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _routing_headers(req: dict[str, Any], schemas: dict[str, Any]) -> dict[str, str]:
    """The 2026-07-28 headers that mirror a stateless request's body, derived from the body being sent (never the
    recorded ones, which the client chose): MCP-Protocol-Version, Mcp-Method, Mcp-Name, Mcp-Param-* (from the
    tool's input schema as this re-drive's own tools/list returned it)."""
    params = _dict(req.get("params"))
    meta = _dict(params.get("_meta"))
    method = str(req.get("method", ""))
    out = {METHOD_HEADER: method}
    version = meta.get(META_VERSION)
    if isinstance(version, str):
        out[VERSION_HEADER] = version
    key = NAME_BEARING.get(method)
    if key is not None and isinstance(params.get(key), str):
        out[NAME_HEADER] = encode_header_value(params[key])
    schema = schemas.get(str(params.get("name"))) if method == "tools/call" else None
    arguments = params.get("arguments")
    if schema is not None and isinstance(arguments, dict):
        try:
            out.update({k.lower(): v for k, v in mcp_param_headers(x_mcp_header_map(schema), arguments).items()})
        except (ValueError, TypeError):
            pass  # a schema the SDK cannot map: the server answers for itself
    return out


def _learn_schemas(answer: dict[str, Any], schemas: dict[str, Any]) -> None:
    tools = (answer.get("result") or {}).get("tools") if isinstance(answer.get("result"), dict) else None
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and isinstance(tool.get("name"), str):
            schemas[tool["name"]] = tool.get("inputSchema")


def _why_not(
    call: dict[str, Any],
    recorded: dict[tuple[str, str], str | None],
    servers: dict[str, str],
    policy: CompiledPolicy | None,
    operator: Principal,
    allow_tools: set[str],
) -> str | None:
    """Why this recorded request is not re-sent, or None to send it. The order: allowed when recorded, allowed
    by today's policy for the operator, and a tool call only when its tool is listed."""
    req, exchange = call["request"], str(call["exchange"])
    key = (exchange, json.dumps(req.get("id")))
    if key not in recorded:
        return "no recorded policy decision allowed it"
    if recorded[key] is not None:
        return recorded[key]
    if policy is None:
        return "no policy to decide it by today (give --config)"
    verdict = authorize(policy, operator, servers.get(exchange, ""), (req,))
    if not verdict.calls:
        return "not a request the policy decides"
    if (denied := verdict.denied) is not None:
        return f"denied by today's policy for {operator.username} (rule {denied[1].rule!r}: {denied[1].reason})"
    method = str(req.get("method", ""))
    name = _tool_name(req) if method == "tools/call" else ""
    if method == "tools/call" and not name:
        return "a tool call that names no tool (its params are not an object with a name)"
    if method == "tools/call" and name not in allow_tools:
        return "tool calls run only with --allow-tools " + name
    return None


def _capture_levels(session: Session) -> dict[str, str]:
    """Exchanges recorded without their values (capture level shape or metadata, policy/capture.py): level."""
    out: dict[str, str] = {}
    for ev in session.events:
        level = ev.get("capture") if ev.get("type") == "exchange.start" else None
        if ev.get("type") == "mcp.request":
            level = (ev.get("body") or {}).get("capture")
        if level in ("shape", "metadata"):
            out[str(ev.get("exchange"))] = str(level)
    return out


def _not_kept(call: dict[str, Any], levels: dict[str, str]) -> str | None:
    level = levels.get(str(call["exchange"]))
    return f"recorded at capture level {level}: its values were not kept, so it cannot be re-sent" if level else None


def _tool_name(req: dict[str, Any]) -> str:
    """The called tool's name; a recorded request whose ``params`` is no object names none (it is still re-driven
    as it was recorded, or skipped with its reason)."""
    params = req.get("params")
    return str(params.get("name", "")) if isinstance(params, dict) else ""


def redrive(
    session: Session,
    to: str,
    allow_tools: set[str],
    token: str | None = None,
    *,
    policy: CompiledPolicy | None,
    operator: Principal,
) -> list[Outcome]:
    """Re-send the session's client requests to ``to`` in a fresh session; compare every answer.

    Only what the gateway allowed when it was recorded and today's ``policy`` allows ``operator`` is sent, with
    headers this re-drive derives itself (none of the recorded client's); each skip says why.
    """
    calls = [c for c in pair_messages(session) if c["from"] == "client"]
    calls = [r for c in calls for r in (c, *c.get("rounds", []))]  # multi-round-trip retries as they were sent
    headers = {**_ACCEPT, **({"authorization": f"Bearer {token}"} if token else {})}
    recorded = recorded_verdicts(session)
    servers = _server_of(session)
    schemas: dict[str, Any] = {}
    out: list[Outcome] = []
    levels = _capture_levels(session)
    with httpx.Client(timeout=60) as http:
        for call in calls:
            req = call["request"]
            method = str(req.get("method", ""))
            name = _tool_name(req) if method == "tools/call" else ""
            why = _not_kept(call, levels) or _why_not(call, recorded, servers, policy, operator, allow_tools)
            if why is not None:
                out.append(Outcome(method, name, "skipped", [why]))
                continue
            extra: dict[str, str] = {}
            if _stateless(req):
                req = _without_request_state(req)
                extra = _routing_headers(req, schemas)
            try:
                r = http.post(to, json=req, headers={**headers, **extra})
            except httpx.HTTPError as e:
                out.append(Outcome(method, name, "failed", [f"{type(e).__name__}: {e}"]))
                continue
            if method == "initialize" and "mcp-session-id" in r.headers:  # the fresh session's id, for what follows
                headers["mcp-session-id"] = r.headers["mcp-session-id"]
            if "id" not in req:
                out.append(Outcome(method, name, "sent" if r.status_code < 400 else "failed"))
                continue
            got = _answer(r, req["id"])
            if got is None:
                out.append(Outcome(method, name, "failed", [f"no JSON-RPC answer (HTTP {r.status_code})"]))
                continue
            result = _dict(got.get("result"))
            if method == "initialize" and isinstance(result.get("protocolVersion"), str):
                headers["mcp-protocol-version"] = result["protocolVersion"]  # as the fresh session agreed it
            if method == "tools/list":
                _learn_schemas(got, schemas)
            old = {k: v for k, v in (call["response"] or {}).items() if k in ("result", "error")}
            new = {k: v for k, v in got.items() if k in ("result", "error")}
            diffs = list(json_diff(old, new))
            out.append(Outcome(method, name, "differs" if diffs else "identical", diffs))
        if "mcp-session-id" in headers:
            try:
                http.delete(to, headers=headers)
            except httpx.HTTPError:
                pass
    return out
