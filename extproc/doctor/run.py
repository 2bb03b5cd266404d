"""Every check of `mcp-extproc doctor`, in the order a start-up needs them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from extproc.doctor.check import Check
from extproc.doctor.live import check_audit, check_metrics, check_processor, check_recording_available, check_upstreams
from extproc.doctor.setup import (
    check_budgets,
    check_config,
    check_envoy,
    check_issuers,
    check_keys,
    check_policy,
    check_store,
    check_upstream_auth,
)
from extproc.settings import Settings


def run_checks(config: Path, running: bool = True) -> list[Check]:
    """Every check, in the order a start-up needs them; ``running`` adds the live processor and metrics."""
    first, s = check_config(config)
    if s is None:
        return [first]
    steps: list[Callable[[Settings], Check | Iterator[Check]]] = [
        check_policy,
        check_issuers,
        check_upstream_auth,
        check_store,
        check_budgets,
        check_recording_available,
        check_keys,
        check_envoy,
    ]
    if running:
        steps += [check_processor, check_metrics, check_upstreams, check_audit]
    out = [first]
    for step in steps:
        result = step(s)
        out.extend([result] if isinstance(result, Check) else result)
    return out
