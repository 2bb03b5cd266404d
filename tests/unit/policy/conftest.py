"""Fixtures for the policy tests: a temp policy directory and a loader for inline YAML."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from policy_helpers import SERVERS, TABLE_POLICY, write

from extproc.policy import CompiledPolicy, load_policy


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    return tmp_path / "policies"


@pytest.fixture
def compile_yaml(policy_dir: Path) -> Callable[..., CompiledPolicy]:
    """Write one policy file and load the directory."""

    def make(text: str, servers: set[str] | None = SERVERS) -> CompiledPolicy:
        write(policy_dir, "policy.yaml", text)
        return load_policy(policy_dir, servers)

    return make


@pytest.fixture
def table_policy(compile_yaml: Callable[..., CompiledPolicy]) -> CompiledPolicy:
    return compile_yaml(TABLE_POLICY)
