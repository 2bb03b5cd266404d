"""Re-drive a recorded session against a given MCP server (a staging copy), for forensics.

The recorded client requests are sent again, in order, in a fresh session; each response is compared with the
recorded one (a JSON diff of ``result``/``error``). Tool calls can have side effects: they are skipped unless
their tool is listed explicitly. Only an explicit ``--to`` URL is ever contacted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx

from extproc.mcp.sse import SseParser
from extproc.recording.replay import Session, pair_messages

_ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
_VOLATILE = {"_meta"}  # per-call metadata (timestamps, progress tokens) is not a difference in behaviour


@dataclass(slots=True)
class Outcome:
    """One re-sent request: identical, different (with the paths that differ), skipped or failed."""

    method: str
    name: str
    verdict: str  # identical | differs | skipped | failed | sent (notifications: nothing to compare)
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


def _mirrored_headers(session: Session) -> dict[str, dict[str, str]]:
    """Per exchange, the MCP headers the client sent that mirror its body (2026-07-28: MCP-Protocol-Version,
    Mcp-Method, Mcp-Name, Mcp-Param-*), as recorded: a stateless request is re-sent exactly as it was."""
    out: dict[str, dict[str, str]] = {}
    for ev in session.events:
        if ev.get("type") == "exchange.start":
            recorded = ev.get("headers") or {}
            out[ev["exchange"]] = {k: v for k, v in recorded.items() if k.startswith("mcp-") and k != "mcp-session-id"}
    return out


def redrive(session: Session, to: str, allow_tools: set[str], token: str | None = None) -> list[Outcome]:
    """Re-send the session's client requests to ``to`` in a fresh session; compare every answer."""
    calls = [c for c in pair_messages(session) if c["from"] == "client"]
    calls = [r for c in calls for r in (c, *c.get("rounds", []))]  # multi-round-trip retries as they were sent
    headers = {**_ACCEPT, **({"authorization": f"Bearer {token}"} if token else {})}
    mirrored = _mirrored_headers(session)
    out: list[Outcome] = []
    with httpx.Client(timeout=60) as http:
        for call in calls:
            req = call["request"]
            method = str(req.get("method", ""))
            name = str((req.get("params") or {}).get("name", "")) if method == "tools/call" else ""
            if method == "tools/call" and name not in allow_tools:
                out.append(Outcome(method, name, "skipped", ["tool calls run only with --allow-tools " + name]))
                continue
            try:
                r = http.post(to, json=req, headers={**headers, **mirrored.get(call["exchange"], {})})
            except httpx.HTTPError as e:
                out.append(Outcome(method, name, "failed", [f"{type(e).__name__}: {e}"]))
                continue
            if method == "initialize" and "mcp-session-id" in r.headers:  # the fresh session's id, for what follows
                headers["mcp-session-id"] = r.headers["mcp-session-id"]
                version = ((call["response"] or {}).get("result") or {}).get("protocolVersion")
                if version:
                    headers["mcp-protocol-version"] = version
            if "id" not in req:
                out.append(Outcome(method, name, "sent" if r.status_code < 400 else "failed"))
                continue
            got = _answer(r, req["id"])
            recorded = call["response"]
            if got is None:
                out.append(Outcome(method, name, "failed", [f"no JSON-RPC answer (HTTP {r.status_code})"]))
                continue
            old = {k: v for k, v in (recorded or {}).items() if k in ("result", "error")}
            new = {k: v for k, v in got.items() if k in ("result", "error")}
            diffs = list(json_diff(old, new))
            out.append(Outcome(method, name, "differs" if diffs else "identical", diffs))
        if "mcp-session-id" in headers:
            try:
                http.delete(to, headers=headers)
            except httpx.HTTPError:
                pass
    return out
