"""servers[].upstream_auth in gateway.yaml: bad settings fail the load, naming the key."""

from __future__ import annotations

import pytest

from extproc.errors import ConfigError
from extproc.settings import parse

AUTH = {"public_url": "https://gw.example.test", "issuers": [{"issuer": "https://idp.example.test"}]}


def _load(upstream_auth: dict) -> object:
    server = {"name": "github", "upstream": "127.0.0.1:9000", "upstream_auth": upstream_auth}
    return parse({"servers": [server], "auth": AUTH, "policy": {"directory": "/tmp"}})


EXCHANGE = {"kind": "token_exchange", "client_id": "gw", "client_secret_file": "/run/secret", "audience": "gh"}
JAG = {**EXCHANGE, "kind": "id_jag", "audience": None, "resource": "https://mcp.test", "as_client_secret_file": "/s",
       "authorization_server": "https://as.test"}  # fmt: skip


def test_a_complete_id_jag_loads() -> None:
    assert _load(JAG).servers[0].upstream_auth.kind == "id_jag"


def test_a_complete_token_exchange_loads() -> None:
    cfg = _load({**EXCHANGE, "scopes": ["repo", "read:org", "repo"]}).servers[0].upstream_auth
    assert cfg.kind == "token_exchange" and cfg.scopes == ["read:org", "repo"]


@pytest.mark.parametrize(
    ("upstream_auth", "message"),
    [
        pytest.param({**EXCHANGE, "client_secret_file": None}, "exactly one of client_secret", id="no-auth"),
        pytest.param({**EXCHANGE, "private_key_file": "/k.pem"}, "exactly one of", id="two-client-auths"),
        pytest.param({**EXCHANGE, "audience": None}, "audience and/or resource", id="no-target"),
        pytest.param({**EXCHANGE, "client_secret_file": "secret"}, "absolute path", id="relative-secret"),
        pytest.param({**EXCHANGE, "scopes": ["a b"]}, "scope token", id="scope-with-space"),
        pytest.param({**EXCHANGE, "resource": "http://api.example.test"}, "https", id="plain-http-resource"),
        pytest.param({**EXCHANGE, "clientid": "x"}, "unknown key", id="typo"),
        pytest.param({"kind": "static", "file": "/s", "header": "host"}, "cannot carry", id="static-into-host"),
        pytest.param({"kind": "static", "file": "/s", "header": "mcp-session-id"}, "cannot carry", id="into-session"),
        pytest.param({"kind": "assertion", "key_file": "/k.pem"}, "audience", id="assertion-no-audience"),
        pytest.param({**JAG, "audience": "gh"}, "not audience", id="id-jag-audience"),
        pytest.param({**JAG, "authorization_server": None}, "authorization_server", id="id-jag-no-as"),
        pytest.param({**JAG, "as_client_secret_file": "s"}, "absolute path", id="id-jag-relative-secret"),
        pytest.param({"kind": "passthrough"}, "kind", id="unknown-kind"),
    ],
)
def test_bad_upstream_auth_fails_the_load(upstream_auth: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        _load(upstream_auth)
    assert "servers.0.upstream_auth" in str(e.value)
