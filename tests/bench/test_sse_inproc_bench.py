"""bench/sse_inproc_bench.py measures what it says: the whole SSE body answered, every event on the record."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"s3_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = sys.modules[spec.name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_event_of_the_body_is_recorded(tmp_path: Path) -> None:
    bench = _load("sse_inproc_bench")
    events = bench.make_events(200_000, 16 << 10)
    body = b"".join(events)

    result = asyncio.run(bench.one_stream(tmp_path, body, 48 << 10, False, False))  # events cut across messages

    lines = [line for p in (tmp_path / "rec").rglob("*.jsonl") for line in p.read_bytes().splitlines()]
    assert sum(b'"type":"mcp.response"' in line for line in lines) == len(events)
    assert not any(b'"allowed":false' in line for line in lines)
    assert result["cpu_ms_per_mib"] > 0
