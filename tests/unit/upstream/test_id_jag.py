"""ID-JAG (enterprise-managed authorization) between two real development issuers: the enterprise IdP issues the
ID-JAG by token exchange, the server's authorization server turns it into an access token (JWT bearer grant)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from extproc.authn.dev_issuer import DevIssuer
from extproc.authn.principal import Principal
from extproc.errors import UpstreamIdentityRefused
from extproc.upstream.base import ExchangeContext
from extproc.upstream.config import IdJag
from extproc.upstream.token_exchange import IdJagExchanger

RESOURCE = "https://mcp.example.test/mcp"


@pytest.fixture
def server_as(tmp_path: Path, key_dir_template: Path, issuer: DevIssuer) -> Iterator[DevIssuer]:
    """The MCP server's own authorization server, trusting ``issuer`` (the enterprise IdP)."""
    shutil.copytree(key_dir_template, tmp_path / "as")
    with DevIssuer(tmp_path / "as") as as_:
        as_.token_exchange.trust_idp(issuer.url, issuer.url + "/jwks")
        as_.token_exchange.register_client("gw-at-as", secret="as-secret")
        as_.token_exchange.add_target(RESOURCE, scopes=("repo",))
        yield as_


def _exchanger(http: httpx.AsyncClient, tmp_path: Path, issuer: DevIssuer, as_: DevIssuer, **over) -> IdJagExchanger:
    (tmp_path / "idp-secret").write_text("idp-secret")
    (tmp_path / "as-secret").write_text("as-secret")
    issuer.token_exchange.register_client("gw", secret="idp-secret")
    issuer.token_exchange.add_target(as_.url, scopes=("repo",), clients={"gw": "gw-at-as"})
    issuer.token_exchange.add_target(RESOURCE, scopes=("repo",))
    cfg = IdJag.model_validate(
        {"kind": "id_jag", "client_id": "gw", "client_secret_file": str(tmp_path / "idp-secret"),
         "authorization_server": as_.url, "resource": RESOURCE, "scopes": ["repo"], "as_client_id": "gw-at-as",
         "as_client_secret_file": str(tmp_path / "as-secret"), **over}
    )  # fmt: skip
    return IdJagExchanger("github", cfg, http)


@pytest.mark.parametrize("idp_endpoint", [False, True], ids=["discovered", "idp-endpoint-configured"])
async def test_the_server_gets_its_authorization_servers_token_for_the_caller(
    tmp_path, issuer, server_as, idp_endpoint: bool
) -> None:
    async with httpx.AsyncClient() as http:
        over = {"token_endpoint": issuer.url + "/token"} if idp_endpoint else {}
        tx = _exchanger(http, tmp_path, issuer, server_as, **over)
        who = Principal(issuer=issuer.url, subject="alice", username="alice")
        events: list = []
        ctx = ExchangeContext("ex", "req", None, issuer.mint("alice", aud="https://gw.test"), events.append)
        headers = await tx.headers_for(who, "github", ctx)

    claims = server_as.verify(headers["authorization"].removeprefix("Bearer "))
    assert claims["iss"] == server_as.url and claims["sub"] == "alice" and claims["aud"] == RESOURCE
    assert claims["src_iss"] == issuer.url and claims["scope"] == "repo"
    assert issuer.token_exchange.exchanges == 1 and server_as.token_exchange.exchanges == 1
    (ev,) = events
    assert ev.kind == "id_jag" and ev.delegation == ["alice", "gw-at-as"] and ev.audience == [RESOURCE]


async def test_an_as_that_does_not_trust_the_idp_refuses(tmp_path, issuer, server_as) -> None:
    server_as.token_exchange.trusted_idps.clear()
    async with httpx.AsyncClient() as http:
        tx = _exchanger(http, tmp_path, issuer, server_as)
        who = Principal(issuer=issuer.url, subject="alice", username="alice")
        events: list = []
        with pytest.raises(UpstreamIdentityRefused, match="invalid_grant"):
            await tx.headers_for(
                who, "github", ExchangeContext("ex", "", None, issuer.mint("alice", aud="x"), events.append)
            )
    assert events[0].refused["endpoint"] == server_as.url + "/token"


def test_an_id_jag_for_another_client_is_refused_at_the_as(issuer, server_as) -> None:
    """The AS checks the ID-JAG's client_id against the client presenting it (a stolen ID-JAG is useless)."""
    server_as.token_exchange.register_client("thief", secret="t")
    jag = issuer.mint("alice", aud=server_as.url, headers={"typ": "oauth-id-jag+jwt"},
                      extra_claims={"client_id": "gw-at-as", "resource": RESOURCE})  # fmt: skip
    form = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jag}
    resp = httpx.post(server_as.url + "/token", data=form, auth=("thief", "t"))
    assert resp.status_code == 400 and "another client" in resp.json()["error_description"]
    ok = httpx.post(server_as.url + "/token", data=form, auth=("gw-at-as", "as-secret"))
    assert ok.status_code == 200
    untyped = issuer.mint("alice", aud=server_as.url, extra_claims={"client_id": "gw-at-as", "resource": RESOURCE})
    plain = httpx.post(server_as.url + "/token", data={**form, "assertion": untyped}, auth=("gw-at-as", "as-secret"))
    assert plain.status_code == 400 and "typ" in plain.json()["error_description"]
