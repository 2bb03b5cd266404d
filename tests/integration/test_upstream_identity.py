"""Identity to the upstream through real Envoy: RFC 8693 token exchange at the development issuer (a real token
endpoint enforcing client authentication, targets, scopes and may_act), a static credential from a file, and the
gateway's own identity assertion; the sample MCP server verifies what it receives and says who it sees."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from gateway_parts import ALLOW_ALL, Gateway, SampleServer

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect
from extproc.launcher import free_port, wait_until
from extproc.recording.report import session_doc
from extproc.upstream.config import JWKS_PATH

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
CLIENT_ID = "mcp-gateway"
API = "demo-api"  # what the issuer knows the sample server as (the exchanged token's audience)


@pytest.fixture
def idp(issuer: DevIssuer, tmp_path: Path) -> tuple[DevIssuer, Path]:
    """The issuer with the gateway registered as a confidential client and the server as a target."""
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret-of-the-gateway\n")
    issuer.token_exchange.register_client(CLIENT_ID, secret="s3cret-of-the-gateway")
    issuer.token_exchange.add_target(API, scopes=("repo:read", "repo:write"), ttl=300)
    return issuer, secret


def _verifying_server(start_mcp_server: Any, issuer: DevIssuer, name: str = "demo") -> SampleServer:
    """A sample server that accepts only a token of ``issuer`` whose audience is ``API``."""
    verify = ["--verify-jwks", f"{issuer.url}/jwks", "--verify-issuer", issuer.url, "--verify-audience", API]
    return start_mcp_server(name, False, *verify)


def _exchange_cfg(secret: Path, **over: Any) -> dict[str, Any]:
    return {"kind": "token_exchange", "client_id": CLIENT_ID, "client_secret_file": str(secret), "audience": API,
            "scopes": ["repo:read"], **over}  # fmt: skip


def _start(start_authed: Any, server: SampleServer, upstream_auth: dict[str, Any], **gateway: Any) -> Gateway:
    entry = {"name": server.name, "upstream": server.upstream, "upstream_auth": upstream_auth}
    return start_authed([server], gateway={"server_entries": [entry], **gateway})


def _post(gw: Gateway, token: str) -> httpx.Response:
    return httpx.post(gw.url(), json=INIT, headers={**ACCEPT, "authorization": f"Bearer {token}"}, timeout=10)


def _events(gw: Gateway, kind: str) -> list[dict[str, Any]]:
    out = []
    for path in gw.store.root.rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            ev = json.loads(line)
            if ev.get("type") == kind:
                out.append(ev)
    return out


def _wait_events(gw: Gateway, kind: str, n: int) -> list[dict[str, Any]]:
    wait_until(lambda: len(_events(gw, kind)) >= n, 10, f"{n} {kind} events")
    return _events(gw, kind)


def _bearer(request: dict[str, Any]) -> str:
    return request["headers"].get("authorization", "").removeprefix("Bearer ")


async def test_alice_reaches_the_server_as_herself_with_a_token_for_it_alone(
    start_mcp_server, start_authed, idp
) -> None:
    issuer, secret = idp
    server = _verifying_server(start_mcp_server, issuer)
    gw = _start(start_authed, server, _exchange_cfg(secret))
    alice = issuer.mint("alice", aud=gw.endpoint, groups=("eng",))
    bob = issuer.mint("bob", aud=gw.endpoint, groups=("ops",))

    async with connect(gw.url(), token=alice, mode="legacy") as conn:
        who = (await conn.client.call_tool("whoami", {})).structured_content
    async with connect(gw.url(), token=bob, mode="legacy") as conn:
        who_bob = (await conn.client.call_tool("whoami", {})).structured_content

    seen = who["verified"]
    assert seen["sub"] == "alice" and seen["aud"] == API and seen["iss"] == issuer.url
    assert seen["act"] == {"sub": CLIENT_ID} and seen["scope"] == "repo:read"
    assert who_bob["verified"]["sub"] == "bob"
    requests = server.seen()
    tokens = {_bearer(r) for r in requests}
    assert alice not in tokens and bob not in tokens  # the callers' own tokens never go upstream
    for r in requests:  # every request reached the server with a token of the caller it names
        assert jwt.decode(_bearer(r), options={"verify_signature": False})["sub"] == r["headers"]["x-mcp-user"]
    assert issuer.token_exchange.exchanges == 2  # one per user: the session's later requests used the cache

    gw.stop()
    sids = {r["headers"]["mcp-session-id"] for r in requests if "mcp-session-id" in r["headers"]}
    for sid in sids:
        assert gw.session(sid).problems == []  # the new event verifies in the hash chain like any other
        shown = session_doc(gw.session(sid))  # what `sessions show --json` prints: each exchange names its credential
        assert all(len(x["upstream"]) == 1 and x["upstream"][0]["delegation"] for x in shown["exchanges"])
    # In full once per session (and credential; a second time at most when the session's second request beats the
    # end of its initialize, whose record was held until the server named the session); later exchanges name it.
    creds = _events(gw, "upstream.credential")
    assert len(sids) == 2 and len(sids) <= len(creds) <= 2 * len(sids) < len(requests)
    named = [e["credential"] for e in _events(gw, "exchange.end") if "credential" in e]
    assert len(creds) + len(named) == len(requests)
    assert {c["sha256"] for c in creds} == {c["sha256"] for c in named}
    assert {c["sha256"] for c in creds} == {hashlib.sha256(t.encode()).hexdigest() for t in tokens}
    first = next(c for c in creds if not c["cached"] and c["delegation"][0] == "alice")
    assert first["kind"] == "token_exchange" and first["delegation"] == ["alice", CLIENT_ID]
    assert first["audience"] == [API] and first["scopes"] == ["repo:read"] and first["expires_at"] > 0
    stored = b"".join(p.read_bytes() for p in gw.store.root.rglob("*.jsonl"))
    for token in (*tokens, alice, bob):
        assert token.split(".")[2].encode() not in stored  # neither token is on disk


async def test_many_users_concurrently_never_get_anothers_token(start_mcp_server, start_authed, idp) -> None:
    issuer, secret = idp
    server = _verifying_server(start_mcp_server, issuer)
    metrics = free_port()
    gw = _start(start_authed, server, _exchange_cfg(secret), processor={"metrics_port": metrics})
    users = [f"user{i}" for i in range(12)]
    tokens = {u: issuer.mint(u, aud=gw.endpoint) for u in users}

    async def post(client: httpx.AsyncClient, user: str) -> int:
        headers = {**ACCEPT, "authorization": f"Bearer {tokens[user]}"}
        return (await client.post(gw.url(), json=INIT, headers=headers)).status_code

    async with httpx.AsyncClient(timeout=30) as client:
        statuses = await asyncio.gather(*(post(client, u) for u in users for _ in range(4)))

    assert statuses == [200] * 48
    requests = server.seen()
    assert len(requests) == 48
    for r in requests:
        claims = jwt.decode(_bearer(r), options={"verify_signature": False})
        assert claims["sub"] == r["headers"]["x-mcp-user"] and claims["aud"] == API
    # Concurrent requests of one user shared one exchange (single flight); users never shared one.
    assert issuer.token_exchange.exchanges == len(users)
    assert sorted(e["sub"] for e in issuer.token_exchange.log) == sorted(users)
    scraped = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text.splitlines()
    counted = 'mcp_extproc_upstream_credentials_total{kind="token_exchange",outcome="%s",server="demo"} %s'
    assert counted % ("issued", "12.0") in scraped and counted % ("cached", "36.0") in scraped


def test_expiry_triggers_a_new_exchange(start_mcp_server, start_authed, idp) -> None:
    issuer, secret = idp
    issuer.token_exchange.add_target(API, scopes=("repo:read",), ttl=3)
    server = _verifying_server(start_mcp_server, issuer)
    gw = _start(start_authed, server, _exchange_cfg(secret, refresh_before_s=2))  # each token serves ~1 s
    alice = issuer.mint("alice", aud=gw.endpoint)

    assert _post(gw, alice).status_code == 200
    assert issuer.token_exchange.exchanges == 1
    wait_until(lambda: _post(gw, alice).status_code == 200 and issuer.token_exchange.exchanges >= 2, 15, "renewal")

    tokens = [_bearer(r) for r in server.seen()]
    assert len(set(tokens)) == 2  # the renewed token replaced the old one; both were alice's
    assert {jwt.decode(t, options={"verify_signature": False})["sub"] for t in tokens} == {"alice"}


@pytest.mark.parametrize("state", ["down", "hang"])
def test_idp_down_gives_503_and_nothing_upstream(start_mcp_server, start_authed, idp, state: str) -> None:
    issuer, secret = idp
    server = _verifying_server(start_mcp_server, issuer)
    gw = _start(start_authed, server, _exchange_cfg(secret, timeout_s=1))
    alice = issuer.mint("alice", aud=gw.endpoint)
    issuer.token_exchange.set_state(state)
    try:
        resp = _post(gw, alice)
    finally:
        issuer.token_exchange.set_state("up")

    assert resp.status_code == 503
    assert resp.json()["error"]["message"].startswith("upstream identity unavailable (request ")
    assert server.seen() == []  # never a call with a weaker identity
    (ev,) = _wait_events(gw, "upstream.credential", 1)
    assert ev["sha256"] == ""
    assert ev["refused"]["error"] == ("temporarily_unavailable" if state == "down" else "timeout")
    assert _post(gw, alice).status_code == 200  # the failure was not cached


@pytest.mark.parametrize(
    ("setup", "code"),
    [
        pytest.param(lambda tx: None, "invalid_target", id="unknown-audience"),
        pytest.param(lambda tx: setattr(tx, "require_may_act", True), "invalid_grant", id="no-may-act"),
    ],
)
def test_refused_exchange_gives_403_with_the_idps_reason_recorded(
    start_mcp_server, start_authed, idp, setup, code: str
) -> None:
    issuer, secret = idp
    setup(issuer.token_exchange)
    server = _verifying_server(start_mcp_server, issuer)
    audience = "other-api" if code == "invalid_target" else API
    gw = _start(start_authed, server, _exchange_cfg(secret, audience=audience))

    resp = _post(gw, issuer.mint("alice", aud=gw.endpoint))

    assert resp.status_code == 403
    assert f"refused a credential for server 'demo': {code}" in resp.json()["error"]["message"]
    assert server.seen() == []
    (ev,) = _wait_events(gw, "upstream.credential", 1)
    assert ev["refused"]["error"] == code and ev["refused"]["status"] == 400 and ev["refused"]["description"]
    end = _wait_events(gw, "exchange.end", 1)[0]
    assert end["status"] == 403 and end["outcome"] == "denied"


def test_may_act_naming_the_gateway_is_honoured(start_mcp_server, start_authed, idp) -> None:
    issuer, secret = idp
    issuer.token_exchange.require_may_act = True
    server = _verifying_server(start_mcp_server, issuer)
    gw = _start(start_authed, server, _exchange_cfg(secret))

    ok = _post(gw, issuer.mint("alice", aud=gw.endpoint, extra_claims={"may_act": {"sub": CLIENT_ID}}))
    other = _post(gw, issuer.mint("bob", aud=gw.endpoint, extra_claims={"may_act": {"sub": "someone-else"}}))

    assert ok.status_code == 200
    assert other.status_code == 403 and "invalid_grant" in other.json()["error"]["message"]
    assert [jwt.decode(_bearer(r), options={"verify_signature": False})["sub"] for r in server.seen()] == ["alice"]


def test_private_key_jwt_client_authentication(start_mcp_server, start_authed, issuer, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    key_file = tmp_path / "client.pem"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    issuer.token_exchange.register_client(CLIENT_ID, public_key=key.public_key())
    issuer.token_exchange.add_target(API, scopes=("repo:read",))
    server = _verifying_server(start_mcp_server, issuer)
    cfg = {"kind": "token_exchange", "client_id": CLIENT_ID, "private_key_file": str(key_file), "audience": API}
    gw = _start(start_authed, server, cfg)

    assert _post(gw, issuer.mint("alice", aud=gw.endpoint)).status_code == 200
    assert _post(gw, issuer.mint("bob", aud=gw.endpoint)).status_code == 200
    assert issuer.token_exchange.exchanges == 2  # each with a fresh assertion (a replayed jti is refused)


def test_static_credential_rotates_when_its_file_changes(start_mcp_server, start_authed, issuer, tmp_path) -> None:
    secret = tmp_path / "api-key"
    secret.write_text("key-one\n")
    server = start_mcp_server("demo")
    gw = _start(start_authed, server, {"kind": "static", "file": str(secret), "header": "x-api-key"})
    alice = issuer.mint("alice", aud=gw.endpoint)

    assert _post(gw, alice).status_code == 200
    secret.write_text("key-two-rotated\n")

    def rotated() -> bool:
        return _post(gw, alice).status_code == 200 and server.seen()[-1]["headers"]["x-api-key"] == "key-two-rotated"

    wait_until(rotated, 10, "rotation")

    seen = server.seen()
    assert seen[0]["headers"]["x-api-key"] == "key-one" and seen[0]["headers"]["x-mcp-user"] == "alice"
    assert all("authorization" not in r["headers"] for r in seen)  # alice's token still stays at the gateway
    secret.unlink()  # gone: refused (503), never sent without the credential
    wait_until(lambda: _post(gw, alice).status_code == 503, 10, "refusal once the credential is gone")
    before = len(server.seen())
    assert _post(gw, alice).status_code == 503
    assert len(server.seen()) == before


def test_gateway_assertion_verifies_with_its_jwks_and_only_at_its_audience(
    start_mcp_server, start_gateway, issuer, tmp_path: Path
) -> None:
    key_file = tmp_path / "gateway-identity.pem"
    key_file.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))  # fmt: skip
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    verify = ["--verify-jwks", public + JWKS_PATH, "--verify-issuer", public, "--verify-header", "x-mcp-identity"]
    demo = start_mcp_server("demo", False, *verify, "--verify-audience", "demo-server")
    other = start_mcp_server("other", False, *verify, "--verify-audience", "other-server")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(ALLOW_ALL)
    entries = [
        {"name": s.name, "upstream": s.upstream,
         "upstream_auth": {"kind": "assertion", "key_file": str(key_file), "audience": f"{s.name}-server"}}
        for s in (demo, other)
    ]  # fmt: skip
    gw = start_gateway(
        [], listen={"port": port}, server_entries=entries,
        auth={"public_url": public, "issuers": [{"issuer": issuer.url}], "forward_identity_headers": True},
        policy={"directory": str(policies), "reload_interval_ms": 200},
    )  # fmt: skip
    alice = issuer.mint("alice", aud=gw.endpoint, groups=("eng",))

    jwks = httpx.get(gw.endpoint + JWKS_PATH, timeout=5)
    assert jwks.status_code == 200 and [k["alg"] for k in jwks.json()["keys"]] == ["EdDSA"]
    async_result = asyncio.run(_whoami(gw.url("demo"), alice))
    assert async_result["verified"]["sub"] == "alice" and async_result["verified"]["aud"] == "demo-server"
    assert async_result["verified"]["groups"] == ["eng"] and async_result["verified"]["sid"]

    assert all("x-mcp-user" not in r["headers"] for r in demo.seen())  # the signed assertion replaces it
    assertion = demo.seen()[-1]["headers"]["x-mcp-identity"]
    claims = jwt.decode(assertion, options={"verify_signature": False})
    assert claims["exchange_id"] and claims["exp"] - claims["iat"] == 60
    # Replayed to another server, the same assertion is refused there: its audience is demo's alone.
    replay = httpx.post(other.mcp_url, json=INIT, headers={**ACCEPT, "x-mcp-identity": assertion}, timeout=10)
    assert replay.status_code == 401 and "audience" in replay.json()["error_description"].lower()
    direct = httpx.post(demo.mcp_url, json=INIT, headers={**ACCEPT, "x-mcp-identity": assertion}, timeout=10)
    assert direct.status_code == 200  # while to its own audience it verifies


async def _whoami(url: str, token: str) -> dict[str, Any]:
    async with connect(url, token=token, mode="legacy") as conn:
        return (await conn.client.call_tool("whoami", {})).structured_content


async def test_id_jag_the_server_sees_alice_through_its_own_authorization_server(
    start_mcp_server, start_authed, issuer, key_dir_template, tmp_path: Path
) -> None:
    import shutil

    resource = "https://demo-mcp.example.test/mcp"
    shutil.copytree(key_dir_template, tmp_path / "server-as")
    with DevIssuer(tmp_path / "server-as") as server_as:
        server_as.token_exchange.trust_idp(issuer.url, issuer.url + "/jwks")
        server_as.token_exchange.register_client("gw-at-as", secret="as-secret")
        server_as.token_exchange.add_target(resource, scopes=("repo:read",))
        issuer.token_exchange.register_client(CLIENT_ID, secret="idp-secret")
        issuer.token_exchange.add_target(server_as.url, scopes=("repo:read",), clients={CLIENT_ID: "gw-at-as"})
        issuer.token_exchange.add_target(resource, scopes=("repo:read",))
        (tmp_path / "idp-secret").write_text("idp-secret")
        (tmp_path / "as-secret").write_text("as-secret")
        verify = ["--verify-jwks", f"{server_as.url}/jwks", "--verify-issuer", server_as.url]
        server = start_mcp_server("demo", False, *verify, "--verify-audience", resource)
        gw = _start(
            start_authed, server,
            {"kind": "id_jag", "client_id": CLIENT_ID, "client_secret_file": str(tmp_path / "idp-secret"),
             "authorization_server": server_as.url, "resource": resource, "scopes": ["repo:read"],
             "as_client_id": "gw-at-as", "as_client_secret_file": str(tmp_path / "as-secret")},
        )  # fmt: skip
        alice = issuer.mint("alice", aud=gw.endpoint)

        async with connect(gw.url(), token=alice, mode="legacy") as conn:
            who = (await conn.client.call_tool("whoami", {})).structured_content

        assert who["verified"]["sub"] == "alice" and who["verified"]["iss"] == server_as.url
        assert who["verified"]["aud"] == resource and who["verified"]["scope"] == "repo:read"
        assert issuer.token_exchange.exchanges == 1 and server_as.token_exchange.exchanges == 1  # then cached
        assert all(_bearer(r) != alice for r in server.seen())
        gw.stop()
        kinds = {(e["kind"], tuple(e["delegation"])) for e in _events(gw, "upstream.credential")}
        assert kinds == {("id_jag", ("alice", "gw-at-as"))}


async def test_each_backend_gets_a_token_for_itself_alone(start_mcp_server, start_authed, idp) -> None:
    """Identity-scoped backends that are separate deployments: alice (team-a) reaches backend a with a token whose
    audience is a's, bob (team-b) reaches b with b's; a backend without its own upstream_auth uses the server's."""
    issuer, secret = idp
    issuer.token_exchange.add_target("api-a", scopes=("repo:read",), ttl=300)
    issuer.token_exchange.add_target("api-b", scopes=("repo:read",), ttl=300)
    verify = ["--verify-jwks", f"{issuer.url}/jwks", "--verify-issuer", issuer.url, "--verify-audience"]
    a = start_mcp_server("a", False, *verify, "api-a")
    b = start_mcp_server("b", False, *verify, "api-b")
    c = start_mcp_server("c", False, *verify, API)
    backends = [
        {"name": "a", "upstream": a.upstream, "subjects": {"groups": ["team-a"]},
         "upstream_auth": _exchange_cfg(secret, audience="api-a")},
        {"name": "b", "upstream": b.upstream, "subjects": {"groups": ["team-b"]},
         "upstream_auth": _exchange_cfg(secret, audience="api-b")},
        {"name": "c", "upstream": c.upstream, "subjects": {"groups": ["team-c"]}},
    ]  # fmt: skip
    entry = {"name": "team", "backends": backends, "upstream_auth": _exchange_cfg(secret)}
    gw = start_authed([a, b, c], gateway={"server_entries": [entry]})
    seen = {}
    for user, group in (("alice", "team-a"), ("bob", "team-b"), ("carol", "team-c")):
        token = issuer.mint(user, aud=gw.endpoint, groups=(group,))
        async with connect(gw.url("team"), token=token, mode="legacy") as conn:
            seen[user] = (await conn.client.call_tool("whoami", {})).structured_content["verified"]

    assert (seen["alice"]["sub"], seen["alice"]["aud"]) == ("alice", "api-a")
    assert (seen["bob"]["sub"], seen["bob"]["aud"]) == ("bob", "api-b")
    assert (seen["carol"]["sub"], seen["carol"]["aud"]) == ("carol", API)  # the server's own upstream_auth
    auds = {jwt.decode(_bearer(r), options={"verify_signature": False})["aud"] for r in a.seen()}
    assert auds == {"api-a"}  # b's token never reached a (nor the other way round: b verifies its audience)
    gw.stop()
    creds = _events(gw, "upstream.credential")
    assert {c["server"] for c in creds} == {"team/a", "team/b", "team"}  # recorded under the backend that used it
