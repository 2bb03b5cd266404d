"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.authn.dev_issuer import DevIssuer, KeyDir
from extproc.launcher import PORT_RANGE_ENV

# Each pytest-xdist worker picks its ports from its own range, below the kernel's ephemeral ports (32768 and up):
# two workers never pick the same port between choosing and binding it, nor does an outgoing connection.
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
if _worker.startswith("gw") and _worker[2:].isdigit() and int(_worker[2:]) < 10:
    _low = 17_000 + 1_500 * int(_worker[2:])
    os.environ[PORT_RANGE_ENV] = f"{_low}-{_low + 1_500}"


@pytest.fixture(scope="session")
def key_dir_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated RSA key for the whole run (generation is the slow part); tests get a copy."""
    path = tmp_path_factory.mktemp("issuer-template")
    KeyDir(path)
    return path


@pytest.fixture
def issuer(tmp_path: Path, key_dir_template: Path) -> Iterator[DevIssuer]:
    """A real (development) OIDC issuer serving discovery + JWKS over HTTP on loopback."""
    shutil.copytree(key_dir_template, tmp_path / "issuer")
    with DevIssuer(tmp_path / "issuer") as iss:
        yield iss


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """Debian's PostgreSQL 15 in a temp dir, once per test session (per xdist worker); see tests/support."""
    from postgres import PostgresServer

    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: object) -> str:
    """A fresh, empty PostgreSQL database for one test."""
    return postgres_server.database()  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the zygote the helper processes were forked from (tests/support/zygote.py), if this process used one."""
    import sys

    if (zygote := sys.modules.get("zygote")) is not None:
        zygote.close()
