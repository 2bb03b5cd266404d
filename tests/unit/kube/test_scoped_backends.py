"""Identity-scoped backends: config validation (file:line), first match wins, none is a 403, session scope."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.authn.principal import Principal
from extproc.authn.session_binding import bind, unbind
from extproc.envoy.fields import UPSTREAM_HEADER
from extproc.errors import ConfigError, SessionNotYours
from extproc.routing import NoBackend, Router
from extproc.settings import load, parse

KEY = b"k" * 32
ALICE = Principal("https://idp", "alice", "alice", ("team-a",))
BOB = Principal("https://idp", "bob", "bob", ("team-b", "team-a"))
CAROL = Principal("https://idp", "carol", "carol", ("team-c",), claims={"tier": "gold"})
SERVER = {
    "name": "team",
    "path": "/api/mcp",
    "backends": [
        {"name": "b", "upstream": "10.0.0.2:80", "subjects": {"users": ["bob"]}},
        {"name": "a", "upstream": "10.0.0.1:8080", "subjects": {"groups": ["team-a"]}},
        {
            "name": "gold",
            "upstream": "[::1]:9000",
            "path": "/",
            "subjects": {"claims": [{"claim": "tier", "values": ["gold"]}]},
        },
    ],
}


def _router() -> Router:
    return Router(parse({"allow_anonymous": True, "servers": [SERVER, {"name": "plain", "upstream": "x.test:1"}]}))


@pytest.mark.parametrize(
    ("who", "backend"), [(ALICE, "a"), (BOB, "b"), (CAROL, "gold")], ids=["group", "first-match-wins", "claim"]
)
def test_first_matching_backend(who: Principal, backend: str) -> None:
    r = _router()
    server = r.match("/team/mcp")
    assert server is not None and r.backend(server, who).name == backend


def test_no_matching_backend_is_forbidden() -> None:
    r = _router()
    server = r.match("/team/mcp?x=1")
    assert server is not None
    with pytest.raises(NoBackend) as e:
        r.backend(server, Principal("https://idp", "eve", "eve", ("team-z",)))
    assert e.value.status == 403
    with pytest.raises(NoBackend):
        r.backend(server, None)  # anonymous never matches a scoped backend


@pytest.mark.parametrize(
    ("path", "who", "address", "upstream_path"),
    [
        ("/team/mcp", ALICE, "10.0.0.1:8080", "/api/mcp"),
        ("/team/mcp?y=1", BOB, "10.0.0.2:80", "/api/mcp?y=1"),
        ("/team/mcp?y=1", CAROL, "[::1]:9000", "/?y=1"),
    ],
)
async def test_upstream_headers_name_the_address_and_rewrite_the_path(  # only the exact MCP path is routed
    path: str, who: Principal, address: str, upstream_path: str
) -> None:
    r = _router()
    server = r.match(path)
    assert server is not None
    headers = await r.upstream_headers(server, r.backend(server, who), path)
    assert headers == {UPSTREAM_HEADER: address, ":path": upstream_path}


async def test_single_upstream_server_keeps_its_static_route() -> None:
    r = _router()
    server = r.match("/plain/mcp")
    assert server is not None
    backend = r.backend(server, None)
    assert backend.name == "" and not backend.dynamic
    assert await r.upstream_headers(server, backend, "/plain/mcp") == {}


def test_session_bound_to_server_and_backend() -> None:
    value = bind("sid", ALICE, KEY, "team/a")
    assert unbind(value, ALICE, KEY, "team/a") == "sid"
    for other in ("team/b", "other/a", ""):
        with pytest.raises(SessionNotYours):
            unbind(value, ALICE, KEY, other)


@pytest.mark.parametrize(
    ("server", "line", "message"),
    [
        pytest.param(
            {"name": "t", "backends": [{"name": "a", "upstream": "h:1", "subjects": {"usrs": ["x"]}}]},
            8,
            "servers.0.backends.0.subjects.usrs: unknown key",
            id="unknown-subject-key",
        ),
        pytest.param(
            {"name": "t", "backends": [{"name": "a", "upstream": "h:1", "subjects": {}}]},
            7,
            "name at least one of users, groups or claims",
            id="empty-subjects",
        ),
        pytest.param(
            {"name": "t", "upstream": "h:1", "backends": []}, 3, "exactly one of upstream or backends", id="both"
        ),
        pytest.param(
            {"name": "t", "backends": [{"name": "a", "upstream": "h", "subjects": {"users": ["x"]}}]},
            6,
            "expected host:port",
            id="bad-upstream",
        ),
    ],
)
def test_bad_backends_are_file_line_errors(tmp_path: Path, server: dict, line: int, message: str) -> None:
    import yaml

    cfg = tmp_path / "gateway.yaml"
    cfg.write_text(yaml.safe_dump({"allow_anonymous": True, "servers": [server]}, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        load(cfg)
    assert f"{cfg}:{line}: " in str(e.value) and message in str(e.value), (str(e.value), cfg.read_text())
