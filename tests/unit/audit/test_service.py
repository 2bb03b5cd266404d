"""The audit service's server: a bounded number of connections and requests at once."""

from __future__ import annotations

import asyncio

import httpx
import uvicorn
from starlette.types import Receive, Scope, Send

from extproc.audit.config import Audit
from extproc.audit.service import server_config
from extproc.launcher import free_port, wait_until


async def test_requests_beyond_max_connections_get_503_at_once() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        entered.set()
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    audit = Audit(address="127.0.0.1", port=free_port(), max_connections=2)
    server = uvicorn.Server(server_config(slow, audit))
    serving = asyncio.create_task(server.serve())
    try:
        await asyncio.to_thread(wait_until, lambda: server.started, 10, "uvicorn")
        url = f"http://127.0.0.1:{audit.port}/"
        async with httpx.AsyncClient(timeout=10) as client:
            first = asyncio.create_task(client.get(url))
            await asyncio.wait_for(entered.wait(), 10)
            over = await client.get(url)  # the first holds a connection and a request: the limit of 2 is reached
            release.set()
            assert over.status_code == 503
            assert (await first).status_code == 200
    finally:
        release.set()
        server.should_exit = True
        await serving
