"""An outside guardrail per server (``servers[].guardrail``): what built-in screens cannot know, asked of a service.

For each call the policy allowed (``methods``: tools/call by default), the gateway POSTs one JSON document:

    {"version": 1, "phase": "request", "exchange": "<id>", "request_id": "<Envoy's x-request-id>",
     "who": {"issuer", "subject", "username", "groups"}, "server": "github", "backend": "",
     "method": "tools/call", "name": "delete_repo", "arguments": {...},
     "definition": {"fingerprint": "sha256:...", "listed_at": 1765000000.0} | null}

and takes one JSON answer within ``timeout_ms``:

    {"verdict": "allow"}
    {"verdict": "deny", "reason": "shown to the caller and recorded"}
    {"verdict": "modify", "arguments": {...}, "reason": "..."}    (the call goes on with these arguments)

With ``results: true`` it is asked again about each of those calls' results before the client gets one: the same
document with ``"phase": "result"`` and ``"result": {...}`` (the JSON-RPC result as the server sent it) added, and
answers allow, deny (the client gets a JSON-RPC error in its place) or ``{"verdict": "modify", "result": {...}}``
(the client gets that result). A JSON body is buffered for it; an SSE body is released event by event, each event
held until it is complete, and the one carrying the result is replaced when the answer is not allow.

Anything else (a timeout, a connection error, a status other than 200, an answer that is not one of those) is an
error: ``on_error: closed`` (the default) refuses the call with 503, ``open`` lets it pass; either way recorded.
Each answer is recorded (``guardrail.verdict``) with its latency; the histogram
``mcp_extproc_guardrail_seconds{server,verdict}`` counts them. Nothing is sent for servers without a guardrail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import orjson

from extproc.tools.config import Guardrail

Verdict = Literal["allow", "deny", "modify", "error"]
MAX_ANSWER_BYTES = 1 << 20  # a modified call's arguments fit in a request body


@dataclass(frozen=True, slots=True)
class Answer:
    verdict: Verdict
    reason: str = ""
    arguments: dict[str, Any] | None = None  # with modify: the arguments the call goes on with
    result: dict[str, Any] | None = None  # with modify of a result: the result the client gets
    latency_ms: float = 0.0


class Guardrails:
    """The configured guardrails by server, and one HTTP client for them all."""

    def __init__(self, by_server: dict[str, Guardrail], http: httpx.AsyncClient) -> None:
        self.by_server = by_server
        self._http = http
        self._tokens = {
            name: g.token_file.read_text().strip() for name, g in by_server.items() if g.token_file is not None
        }

    @classmethod
    def from_servers(cls, servers: dict[str, Guardrail | None]) -> Guardrails | None:
        """None when no server has a guardrail (nothing on the request path then). A token file that cannot be
        read fails the start (OSError)."""
        configured = {name: g for name, g in servers.items() if g is not None}
        if not configured:
            return None
        return cls(configured, httpx.AsyncClient(follow_redirects=False, headers={"user-agent": "mcp-extproc"}))

    def asks(self, server: str, method: str) -> bool:
        g = self.by_server.get(server)
        return g is not None and method in g.methods

    def asks_results(self, server: str, method: str) -> bool:
        g = self.by_server.get(server)
        return g is not None and g.results and method in g.methods

    def fails_open(self, server: str) -> bool:
        return self.by_server[server].on_error == "open"

    async def ask(self, server: str, question: dict[str, Any]) -> Answer:
        """The guardrail's answer; ``error`` (with why) for anything that is not a valid one in time."""
        g = self.by_server[server]
        headers = {"content-type": "application/json"}
        if server in self._tokens:
            headers["authorization"] = f"Bearer {self._tokens[server]}"
        t0 = time.perf_counter()
        try:
            resp = await self._http.post(
                g.url, content=orjson.dumps(question), headers=headers, timeout=g.timeout_ms / 1000
            )
            elapsed = (time.perf_counter() - t0) * 1000
            if resp.status_code != 200:
                return Answer("error", f"answered HTTP {resp.status_code}", latency_ms=elapsed)
            if len(resp.content) > MAX_ANSWER_BYTES:
                return Answer("error", f"answer over {MAX_ANSWER_BYTES} bytes", latency_ms=elapsed)
            return _parse(orjson.loads(resp.content), elapsed, "result" if "result" in question else "arguments")
        except httpx.TimeoutException:
            return Answer("error", f"no answer within {g.timeout_ms} ms", latency_ms=(time.perf_counter() - t0) * 1000)
        except (httpx.HTTPError, orjson.JSONDecodeError) as e:
            return Answer("error", f"{type(e).__name__}: {e}"[:300], latency_ms=(time.perf_counter() - t0) * 1000)

    async def close(self) -> None:
        await self._http.aclose()


def _parse(doc: Any, latency_ms: float, changes: str = "arguments") -> Answer:
    if not isinstance(doc, dict) or doc.get("verdict") not in ("allow", "deny", "modify"):
        return Answer("error", "answer is not {verdict: allow|deny|modify}", latency_ms=latency_ms)
    reason = doc.get("reason", "")
    reason = reason[:500] if isinstance(reason, str) else ""
    if doc["verdict"] == "modify":
        changed = doc.get(changes)  # a request's arguments, or a result
        if not isinstance(changed, dict):
            return Answer("error", f"modify without an object at {changes!r}", latency_ms=latency_ms)
        if changes == "result":
            return Answer("modify", reason, latency_ms=latency_ms, result=changed)
        return Answer("modify", reason, changed, latency_ms=latency_ms)
    return Answer(doc["verdict"], reason, latency_ms=latency_ms)
