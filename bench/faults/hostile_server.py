"""A hostile MCP server for the fault suite (aiohttp.web, loopback only). The tool called picks the misbehaviour:

    invalid_json    application/json body that is not JSON
    huge_event      one SSE event of HUGE bytes
    endless         an SSE stream that never ends (a progress event every 10 ms)
    wrong_session   a valid result under another Mcp-Session-Id than the request's
    unasked_id      a result for a JSON-RPC id never asked, then the real one
    anything else   a plain result

``initialize`` answers normally with a session id; GET /_seen answers (readiness).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets

from aiohttp import web

HUGE = 4 << 20


def _result(msg_id: object, text: str) -> dict:  # type: ignore[type-arg]
    return {"jsonrpc": "2.0", "id": msg_id, "result": {"content": [{"type": "text", "text": text}]}}


def _event(doc: object) -> bytes:
    return b"event: message\ndata: " + json.dumps(doc).encode() + b"\n\n"


async def mcp(request: web.Request) -> web.StreamResponse:
    if request.method != "POST":
        return web.Response(status=405)
    body = await request.json()
    sid = request.headers.get("mcp-session-id") or secrets.token_hex(16)
    msg_id, method = body.get("id"), body.get("method")
    headers = {"mcp-session-id": sid}
    if msg_id is None:
        return web.Response(status=202, headers=headers)
    if method == "initialize":
        result = {
            "protocolVersion": body["params"]["protocolVersion"],
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "hostile", "version": "1"},
        }
        return web.json_response({"jsonrpc": "2.0", "id": msg_id, "result": result}, headers=headers)
    tool = (body.get("params") or {}).get("name") if method == "tools/call" else None
    if tool == "invalid_json":
        return web.Response(
            body=b'{"jsonrpc": "2.0", "id": ' + str(msg_id).encode() + b', "result": {"oops',
            content_type="application/json",
            headers=headers,
        )
    if tool == "wrong_session":
        return web.json_response(_result(msg_id, "wrong"), headers={"mcp-session-id": secrets.token_hex(16)})
    if tool == "unasked_id":
        data = json.dumps([_result(987654, "never asked"), _result(msg_id, "asked")]).encode()
        return web.Response(body=data, content_type="application/json", headers=headers)
    if tool in ("huge_event", "endless"):
        resp = web.StreamResponse(headers={**headers, "content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        if tool == "huge_event":
            await resp.write(_event(_result(msg_id, "x" * HUGE)))
            await resp.write_eof()
            return resp
        n = 0
        try:
            while True:  # never ends; the client (or the gateway) hangs up
                n += 1
                note = {
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {"progressToken": msg_id, "progress": n},
                }
                await resp.write(_event(note))
                await asyncio.sleep(0.01)
        except (ConnectionResetError, asyncio.CancelledError):
            raise
    return web.json_response(_result(msg_id, "plain"), headers=headers)


async def seen(request: web.Request) -> web.Response:
    return web.json_response({"name": "hostile", "requests": []})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application(client_max_size=8 << 20)
    app.router.add_route("*", "/mcp", mcp)
    app.router.add_get("/_seen", seen)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
