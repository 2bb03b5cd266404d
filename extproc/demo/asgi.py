"""The sample MCP server's ASGI wrappers, for tests: what reached the server (GET /_seen), the server's own
credential check, and transport quirks a gateway must survive (bare CR line ends, fixed session ids, gzip)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import jwt
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MCP_PATH = "/mcp"
SEEN_PATH = "/_seen"
VERIFIED_HEADER = "x-sample-verified"  # set by VerifyCredential only (a client's copy is dropped)


@dataclass(frozen=True)
class Verification:
    """What the server requires of the credential it receives: a JWT from ``issuer`` for ``audience`` (itself),
    signed by a key in ``jwks_url``, in ``header`` (``authorization``: as a bearer token)."""

    jwks_url: str
    issuer: str
    audience: str
    header: str = "authorization"


class VerifyCredential:
    """ASGI wrapper: every /mcp request must carry a credential that verifies (else 401, nothing reaches the MCP
    app); the verified claims go to the tools in ``x-sample-verified``. The server's own check, as a server that
    calls an API on the user's behalf would make."""

    def __init__(self, app: ASGIApp, check: Verification) -> None:
        self.app = app
        self.check = check
        self.jwks = jwt.PyJWKClient(check.jwks_url, cache_keys=True, lifespan=30)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].rstrip("/") != MCP_PATH:
            await self.app(scope, receive, send)
            return
        name = self.check.header.encode()
        headers = [(k, v) for k, v in scope["headers"] if k.lower() != VERIFIED_HEADER.encode()]
        value = next((v.decode("latin-1") for k, v in headers if k.lower() == name), "")
        if self.check.header == "authorization":
            scheme, _, value = value.partition(" ")
            value = value.strip() if scheme.lower() == "bearer" else ""
        try:
            key = await anyio.to_thread.run_sync(self.jwks.get_signing_key_from_jwt, value)
            claims = jwt.decode(
                value, key.key, algorithms=["RS256", "ES256", "EdDSA"], audience=self.check.audience,
                issuer=self.check.issuer, options={"require": ["exp", "iss", "aud", "sub"]},
            )  # fmt: skip
        except jwt.PyJWTError as e:
            await JSONResponse({"error": "invalid_token", "error_description": str(e)}, 401)(scope, receive, send)
            return
        seen = {k: claims.get(k) for k in ("iss", "sub", "aud", "act", "scope", "groups", "preferred_username", "sid")}
        headers.append((VERIFIED_HEADER.encode(), json.dumps(seen).encode()))
        await self.app({**scope, "headers": headers}, receive, send)


def _summarize(body: bytes) -> tuple[str | None, str | None]:
    """JSON-RPC method and tool name of a request body (first message of a batch); (None, None) if not JSON-RPC."""
    try:
        message: Any = json.loads(body) if body else None
    except ValueError:
        return None, None
    if isinstance(message, list):
        message = message[0] if message else None
    if not isinstance(message, dict):
        return None, None
    method = message.get("method")
    params = message.get("params")
    tool = params.get("name") if method == "tools/call" and isinstance(params, dict) else None
    return method, tool


class SeenRecorder:
    """ASGI wrapper: records every request to /mcp (method, tool, headers) and serves them at GET /_seen."""

    def __init__(self, app: ASGIApp, name: str) -> None:
        self.app = app
        self.name = name
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record /mcp requests, answer /_seen, pass everything else (including lifespan) through."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == SEEN_PATH:
            await JSONResponse({"name": self.name, "requests": self.requests})(scope, receive, send)
            return
        if scope["path"].rstrip("/") != MCP_PATH:
            await self.app(scope, receive, send)
            return

        body, replay = await _buffer_body(receive)
        method, tool = _summarize(body) if scope["method"] == "POST" else (None, None)
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            k, v = key.decode("latin-1").lower(), value.decode("latin-1")
            headers[k] = f"{headers[k]},{v}" if k in headers else v
        self.requests.append({"method": method, "tool": tool, "http_method": scope["method"], "headers": headers})
        await self.app(scope, replay, send)


async def _buffer_body(receive: Receive) -> tuple[bytes, Receive]:
    """Read the whole request body, and return it with a receive that replays it once then defers to the original."""
    chunks: list[bytes] = []
    pending: Message | None = None
    while True:
        message = await receive()
        if message["type"] != "http.request":
            pending = message  # client went away mid-body; the app must still see the disconnect
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    replayed = False

    async def replay() -> Message:
        nonlocal replayed, pending
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        if pending is not None:
            message, pending = pending, None
            return message
        # After the body, the app only waits here for http.disconnect (e.g. to end an SSE stream).
        return await receive()

    return body, replay


class BareCrLineEnds:
    """ASGI wrapper: SSE responses end their lines with a bare CR (allowed by the SSE standard, rare in practice)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Rewrite CRLF and LF to CR in text/event-stream bodies (JSON data has no raw line ends)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sse = False

        async def send_cr(message: Message) -> None:
            nonlocal sse
            if message["type"] == "http.response.start":
                sse = any(
                    k.lower() == b"content-type" and v.startswith(b"text/event-stream") for k, v in message["headers"]
                )
            elif message["type"] == "http.response.body" and sse:
                message = {**message, "body": message.get("body", b"").replace(b"\r\n", b"\r").replace(b"\n", b"\r")}
            await send(message)

        await self.app(scope, receive, send_cr)


class FixedSessionId:
    """ASGI wrapper: the server names every session ``fixed`` (a predictable or hostile upstream, for tests).

    The SDK's own id is kept behind it: the latest one is what ``fixed`` means on the way in.
    """

    def __init__(self, app: ASGIApp, fixed: str) -> None:
        self.app, self.fixed, self.real = app, fixed.encode(), b""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        name = b"mcp-session-id"
        headers = [(k, self.real if k.lower() == name and v == self.fixed else v) for k, v in scope["headers"]]

        async def send_fixed(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = []
                for k, v in message["headers"]:
                    if k.lower() == name:
                        self.real, v = v, self.fixed
                    out.append((k, v))
                message = {**message, "headers": out}
            await send(message)

        await self.app({**scope, "headers": headers}, receive, send_fixed)


Gzip = Literal["off", "negotiated", "always"]


class ForceGzip:
    """ASGI wrapper that asks for gzip on every request: a server that compresses whatever the client accepts."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"accept-encoding"]
            scope = {**scope, "headers": [*headers, (b"accept-encoding", b"gzip")]}
        await self.app(scope, receive, send)
