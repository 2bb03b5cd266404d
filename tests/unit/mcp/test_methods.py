"""The method table holds the official SDK's per-revision surface maps, and policies can name every method."""

from __future__ import annotations

import pytest
from mcp_types import methods as sdk

from extproc.mcp import methods


def _sdk(surface, revision: str) -> set[str]:
    return {method for method, rev in surface if rev == revision}


@pytest.mark.parametrize("revision", ["2025-06-18", "2025-11-25", "2026-07-28"])
def test_table_matches_the_sdk_surface(revision: str) -> None:
    assert methods.CLIENT_METHODS[revision] == _sdk(sdk.CLIENT_REQUESTS, revision)
    assert methods.CLIENT_NOTIFICATIONS[revision] == _sdk(sdk.CLIENT_NOTIFICATIONS, revision)
    assert methods.SERVER_METHODS[revision] == _sdk(sdk.SERVER_REQUESTS, revision)
    assert methods.SERVER_NOTIFICATIONS[revision] == _sdk(sdk.SERVER_NOTIFICATIONS, revision)


def test_cacheable_and_input_required_match_the_sdk() -> None:
    assert methods.CACHEABLE == sdk.CACHEABLE_METHODS
    assert methods.INPUT_REQUIRED == sdk.INPUT_REQUIRED_METHODS


@pytest.mark.parametrize(
    "method", ["server/discover", "subscriptions/listen", "notifications/subscriptions/acknowledged", "tasks/get"]
)
def test_policy_vocabulary_knows_2026_and_tasks(method: str) -> None:
    assert method in methods.KNOWN_METHODS


@pytest.mark.parametrize(
    ("revision", "stateless"), [("2025-06-18", False), ("2025-11-25", False), ("2026-07-28", True), (None, False)]
)
def test_stateless_revisions(revision: str | None, stateless: bool) -> None:
    assert methods.is_stateless(revision) is stateless
