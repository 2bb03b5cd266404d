"""Router: exact MCP paths only, and the Origin check every mode applies."""

from __future__ import annotations

import pytest

from extproc.errors import OriginNotAllowed
from extproc.routing import Router, allowed_origins
from extproc.settings import parse

SERVERS = [{"name": "demo", "upstream": "127.0.0.1:9000"}, {"name": "gh", "upstream": "127.0.0.1:9001"}]


def _router(**extra: object) -> Router:
    return Router(parse({"allow_anonymous": True, "servers": SERVERS, **extra}))


@pytest.mark.parametrize(
    ("path", "server"),
    [
        ("/demo/mcp", "demo"),
        ("/demo/mcp?x=1&y=/demo", "demo"),
        ("/gh/mcp", "gh"),
        ("/demo/mcp/", None),
        ("/demo/mcp/x", None),
        ("/demo/mcp/../x", None),
        ("/demo/mcpx", None),
        ("/demo", None),
        ("/DEMO/mcp", None),
        ("//demo/mcp", None),
        ("/other/mcp", None),
    ],
)
def test_only_the_exact_path_names_a_server(path: str, server: str | None) -> None:
    found = _router().match(path)
    assert (found.name if found else None) == server


def test_origins_without_auth_are_the_listen_address_and_configured_ones() -> None:
    router = _router(listen={"port": 8090, "allowed_origins": ["https://App.example.com/"]})
    for ok in (None, "http://127.0.0.1:8090", "http://localhost:8090", "https://app.example.com"):
        router.check_origin(ok)
    for bad in ("http://evil.example", "http://127.0.0.1:9999", "null", "https://app.example.com.evil"):
        with pytest.raises(OriginNotAllowed):
            router.check_origin(bad)


AUTHED = {
    "servers": SERVERS,
    "auth": {
        "public_url": "https://gw.example.test/",
        "issuers": [{"issuer": "https://id.example.test"}],
        "allowed_origins": ["https://app.example.test"],
    },
    "policy": {"directory": "/nonexistent"},
}


def test_origins_with_auth_are_the_public_urls_and_configured_ones() -> None:
    assert allowed_origins(parse(AUTHED)) == {"https://gw.example.test", "https://app.example.test"}


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        pytest.param(None, True, id="no-origin"),
        pytest.param("https://gw.example.test", True, id="own-origin"),
        pytest.param("https://GW.example.test", True, id="own-origin-case"),
        pytest.param("https://app.example.test", True, id="listed"),
        pytest.param("https://evil.example.test", False, id="other-site"),
        pytest.param("null", False, id="opaque-origin"),
        pytest.param("http://gw.example.test", False, id="other-scheme"),
    ],
)
def test_check_origin_with_auth(origin: str | None, allowed: bool) -> None:
    router = Router(parse(AUTHED))
    if allowed:
        router.check_origin(origin)
    else:
        with pytest.raises(OriginNotAllowed):
            router.check_origin(origin)
