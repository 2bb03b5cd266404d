"""Recording units through real Envoy: a server's session is recorded under its server's (and backend's) unit, so a
predictable or hostile upstream can neither mix into nor hide inside another server's recording."""

from __future__ import annotations

import httpx
import pytest
from gateway_parts import ACCEPT

from extproc.demo.mcp_client import run_session
from extproc.recording.replay import load_session
from extproc.reserved import RETENTION_SESSION, server_unit

SHARED = "shared-session-1"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


async def test_two_servers_naming_the_same_session_get_units_of_their_own(
    start_mcp_server, start_authed, issuer
) -> None:
    alpha = start_mcp_server("alpha", False, "--session-id", SHARED)
    beta = start_mcp_server("beta", False, "--session-id", SHARED)
    gw = start_authed([alpha, beta])
    for name in ("alpha", "beta"):
        result = await run_session(gw.url(name), token=issuer.mint("alice", aud=gw.endpoint), mode="legacy")
        assert result.session_id
    gw.stop()

    keys = set(gw.store.list_sessions())
    assert {server_unit("alpha", "", SHARED), server_unit("beta", "", SHARED)} <= keys and SHARED not in keys
    for name in ("alpha", "beta"):
        session = load_session(gw.store, server_unit(name, "", SHARED))
        assert session.problems == []
        servers = {e["server"] for e in session.events if e["type"] == "exchange.start"}
        assert servers == {name}  # nothing of the other server's session mixed in


@pytest.mark.parametrize(
    "forged",
    [server_unit("alpha", "", SHARED), RETENTION_SESSION, "h-" + "0" * 40, "x-ex1", "audit-2026-01-01"],
    ids=["another-servers-unit", "retention", "hashed-key", "synthetic", "audit-trail"],
)
def test_an_upstream_naming_a_reserved_unit_is_refused(start_mcp_server, start_authed, issuer, forged: str) -> None:
    alpha = start_mcp_server("alpha")
    beta = start_mcp_server("beta", False, "--session-id", forged)
    gw = start_authed([alpha, beta])
    headers = {**ACCEPT, "authorization": f"Bearer {issuer.mint('alice', aud=gw.endpoint)}"}
    r = httpx.post(gw.url("beta"), json=INIT, headers=headers, timeout=10)
    assert r.status_code == 502 and "session id the gateway cannot record under" in r.text
    gw.stop()
    assert forged not in gw.store.list_sessions()
