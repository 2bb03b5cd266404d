"""Identity-scoped backends through real Envoy: two sample MCP servers behind one gateway server name.

alice (team-a) reaches only backend A, bob (team-b) only B; a routing header or Host sent by the client changes
nothing; a session id opened on A is refused anywhere else; the choice is in exchange.start.
"""

from __future__ import annotations

import httpx
from gateway_parts import ACCEPT, Gateway, SampleServer, open_session

from extproc.envoy.fields import UPSTREAM_HEADER

LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


def _scoped(a: SampleServer, b: SampleServer) -> list[dict]:
    return [
        {
            "name": "team",
            "backends": [
                {"name": "a", "upstream": a.upstream, "subjects": {"groups": ["team-a"]}},
                {"name": "b", "upstream": b.upstream, "subjects": {"groups": ["team-b"]}},
            ],
        },
        # A second server whose backend for team-a members is B: the place to replay a session id opened on A.
        {"name": "other", "backends": [{"name": "b", "upstream": b.upstream, "subjects": {"groups": ["team-a"]}}]},
    ]


def _start(start_mcp_server, start_authed) -> tuple[SampleServer, SampleServer, Gateway]:
    a, b = start_mcp_server("a"), start_mcp_server("b")
    gw = start_authed([a, b], gateway={"server_entries": _scoped(a, b)})
    return a, b, gw


def _count(server: SampleServer) -> int:
    return len(server.seen())


def test_each_caller_reaches_only_the_backend_of_their_team(start_mcp_server, start_authed, issuer) -> None:
    a, b, gw = _start(start_mcp_server, start_authed)
    alice = issuer.mint("alice", aud=gw.endpoint, groups=("team-a",))
    bob = issuer.mint("bob", aud=gw.endpoint, groups=("team-b",))
    carol = issuer.mint("carol", aud=gw.endpoint, groups=("team-c",))

    h_alice = open_session(gw.url("team"), alice)
    seen_a, seen_b = _count(a), _count(b)
    assert seen_a >= 2 and seen_b == 0
    h_bob = open_session(gw.url("team"), bob)
    seen_b_after_bob = _count(b)
    assert _count(a) == seen_a and seen_b_after_bob >= 2

    # A client naming B's address in the routing header, under odd Host values, still lands on A.
    spoof = {**h_alice, UPSTREAM_HEADER: b.upstream, "x-envoy-original-dst-host": b.upstream}
    for host in ("127.0.0.1", b.upstream, f"{b.upstream}.evil", "team.b"):
        r = httpx.post(gw.url("team"), json=LIST, headers={**spoof, "host": host}, timeout=10)
        assert r.status_code == 200, r.text
    assert _count(b) == seen_b_after_bob
    # What reached A carries the processor's own value, never the client's.
    assert {r["headers"].get(UPSTREAM_HEADER) for r in a.seen()} == {a.upstream}
    b_before = _count(b)

    # carol matches no backend: 403, recorded, nothing forwarded.
    r = httpx.post(gw.url("team"), json=LIST, headers={**ACCEPT, "authorization": f"Bearer {carol}"}, timeout=10)
    assert r.status_code == 403 and "no backend of server 'team'" in r.text
    # alice's session id presented where her backend is B: refused, B untouched.
    r = httpx.post(gw.url("other"), json=LIST, headers=h_alice, timeout=10)
    assert r.status_code == 403 and "session belongs to another identity" in r.text
    # bob's id presented by bob still works; alice's id presented by bob does not.
    assert httpx.post(gw.url("team"), json=LIST, headers=h_bob, timeout=10).status_code == 200
    stolen = {**h_alice, "authorization": f"Bearer {bob}"}
    assert httpx.post(gw.url("team"), json=LIST, headers=stolen, timeout=10).status_code == 403
    assert _count(b) == b_before + 1
    gw.stop()

    starts = [e for p in gw.store.root.rglob("*.jsonl") for e in _events(p) if e.get("type") == "exchange.start"]
    by_user = {(e["principal"]["subject"], e["server"], e["backend"]) for e in starts}
    assert ("alice", "team", "a") in by_user and ("bob", "team", "b") in by_user
    assert ("carol", "team", "") in by_user  # the refusal is recorded, with no backend chosen
    assert not any(s == "alice" and bk == "b" and srv == "team" for s, srv, bk in by_user)
    # Envoy removed the client's copy before the processor ran: no recorded request carries it.
    assert starts and not any(UPSTREAM_HEADER in e["headers"] for e in starts)
    assert any("x-envoy-original-dst-host" in e["headers"] for e in starts)  # (what was sent is recorded)


def _events(path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
