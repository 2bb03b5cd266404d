"""A loopback reverse proxy that adds ``Authorization: Bearer $CONFORMANCE_BEARER_TOKEN`` to every request.

The conformance suite cannot send a bearer token, so this stands in for an agent's credential. Everything else
passes through untouched in both directions, as it arrived: method, path, query, every header (duplicates and
``Host`` included), the body, and streamed (SSE) responses chunk by chunk; a client that goes away closes the
upstream request too. Usage: ``token_proxy.py PORT UPSTREAM_BASE_URL``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import anyio
import httpx
import uvicorn

# Hop-by-hop headers are the proxy's own business; a client's Authorization is replaced by the injected one.
DROPPED = {b"connection", b"keep-alive", b"transfer-encoding", b"te", b"trailer", b"upgrade", b"authorization"}


def build_app(upstream: str, token: str) -> Any:
    client = httpx.AsyncClient(base_url=upstream, timeout=httpx.Timeout(60, read=None))
    bearer = f"Bearer {token}".encode()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await client.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/_proxy_ready":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"ok"})
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in DROPPED]
        headers.append((b"authorization", bearer))
        target = scope["raw_path"].decode() + (f"?{scope['query_string'].decode()}" if scope["query_string"] else "")
        request = client.build_request(scope["method"], target, headers=headers, content=body)
        response = await client.send(request, stream=True)
        try:
            out = [(k.lower(), v) for k, v in response.headers.raw if k.lower() not in DROPPED]
            await send({"type": "http.response.start", "status": response.status_code, "headers": out})
            async with anyio.create_task_group() as tg:

                async def watch_disconnect() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    tg.cancel_scope.cancel()

                tg.start_soon(watch_disconnect)
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b""})
                tg.cancel_scope.cancel()
        finally:
            await response.aclose()

    return app


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    app = build_app(upstream, os.environ["CONFORMANCE_BEARER_TOKEN"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()
