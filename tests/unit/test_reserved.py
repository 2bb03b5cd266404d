"""Every reserved name in one place (extproc/reserved.py): units an upstream may not name, server and rule names."""

from __future__ import annotations

import pytest

from extproc import reserved
from extproc.recording.bounds import RETENTION_SESSION
from extproc.recording.events import synthetic_session_id


@pytest.mark.parametrize(
    "name",
    [
        RETENTION_SESSION,
        "mcp-extproc-anything",
        synthetic_session_id("ex1"),
        "r-0123456789abcdef-1",
        "t-0123456789abcdef-00",
        "audit-2026-12-07",
        reserved.server_unit("alpha", "", "s1"),
        "h-" + "a" * 40,
    ],
)
def test_every_name_the_gateway_gives_a_unit_is_reserved(name: str) -> None:
    assert reserved.is_reserved_unit(name)


@pytest.mark.parametrize("name", ["0f3c9a", "sess-1", "ABC_def", "mcp-session"])
def test_ordinary_session_ids_are_not_reserved(name: str) -> None:
    assert not reserved.is_reserved_unit(name)


@pytest.mark.parametrize(
    ("server", "backend", "session"),
    [("alpha", "", "s1"), ("alpha", "blue", "u_beta__s1"), ("a-b", "c-d", "x_y_z"), ("alpha", "", "")],
)
def test_a_server_unit_names_its_server_and_backend_whatever_the_session(server, backend, session) -> None:
    assert reserved.parse_server_unit(reserved.server_unit(server, backend, session)) == (server, backend, session)


def test_reserved_rule_and_server_names() -> None:
    assert reserved.is_reserved_rule_name("default-deny") and reserved.is_reserved_rule_name("builtin-jwt")
    assert not reserved.is_reserved_rule_name("eng-read")
    assert reserved.is_reserved_server("audit") and not reserved.is_reserved_server("alpha")
