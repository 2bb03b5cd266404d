"""bench/exchange_bench.py --mix gateway measures what gateway_bench sends: every exchange allowed and recorded."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"s1_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_gateway_mix_is_six_allowed_and_recorded_exchanges(tmp_path: Path) -> None:
    """JSON and SSE alternate; the SSE answer's three events are each an mcp.response (3 x 1 + 3 x 3)."""
    bench, gateway = _load("exchange_bench"), _load("gateway_bench")

    result = asyncio.run(bench.run(6, tmp_path, False, mix="gateway"))

    events = [line for p in (tmp_path / "rec").rglob("*.jsonl") for line in p.read_bytes().splitlines()]
    per_pair = gateway.EVENTS_PER_EXCHANGE["json"] + gateway.EVENTS_PER_EXCHANGE["sse"]
    assert result["exchanges"] == 6  # none refused
    assert len(events) == 3 * (per_pair + 2 * gateway.DECISIONS_PER_EXCHANGE)
    assert sum(b'"type":"mcp.response"' in e for e in events) == 3 + 3 * 3
    assert not any(b'"allowed":false' in e for e in events)
