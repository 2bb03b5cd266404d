"""The budgets: section of gateway.yaml: local by default, a Redis URL, and clear errors for anything else."""

from __future__ import annotations

import pytest

from extproc.errors import ConfigError
from extproc.settings import parse

BASE = {"servers": [{"name": "demo", "upstream": "127.0.0.1:9000"}], "allow_anonymous": True}


def test_without_the_section_budgets_are_local() -> None:
    assert parse(BASE).budgets is None


@pytest.mark.parametrize(
    ("store", "shared"),
    [("local", False), ("redis://127.0.0.1:6379/0", True), ("rediss://r.example:6380/1", True),
     ("unix:///run/redis.sock", True)],
)  # fmt: skip
def test_accepted_stores(store: str, shared: bool) -> None:
    budgets = parse({**BASE, "budgets": {"store": store}}).budgets
    assert budgets is not None and budgets.shared is shared and budgets.timeout_ms == 250


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"store": "memcached://x:1"}, "budgets.store: expected local or a redis://host:port/db URL"),
        ({"store": "redis://"}, "budgets.store: expected local or a redis://host:port/db URL"),
        ({"timeout_ms": 0}, "budgets.timeout_ms: Input should be greater than or equal to 10"),
        ({"stor": "local"}, "budgets.stor: unknown key (did you mean 'store'?)"),
    ],
)
def test_refused_sections_name_the_key(section: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse({**BASE, "budgets": section})
    assert message in str(e.value)
