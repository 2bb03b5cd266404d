"""Fixtures shared by unit and integration tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from extproc.authn.dev_issuer import DevIssuer, KeyDir


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
