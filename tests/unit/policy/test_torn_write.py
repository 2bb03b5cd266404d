"""A policy file caught half-written is never installed (found by bench/faults/policy_reload.py under load).

The first half of a two-rule file that ends between the rules is a valid policy with a rule missing: installed,
it decided real requests (eng's calls fell to default deny while the file was being copied).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from policy_helpers import SERVERS, who, write

from extproc.mcp.jsonrpc import McpCall
from extproc.policy import PolicyWatcher, decide

FIRST = """apiVersion: mcp-extproc/v1
rules:
  - name: eng-read
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: [github], tools: ["get_*"]}
"""
SECOND = """  - name: eng-search
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: [github], tools: [search_code]}
"""
INITIAL = """apiVersion: mcp-extproc/v1
rules:
  - name: eng-everything
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: [github]}
"""
GET = McpCall("tools/call", id=1, tool="get_me")


async def test_a_file_being_written_is_not_loaded_until_it_stays_the_same(policy_dir: Path) -> None:
    write(policy_dir, "a.yaml", INITIAL)
    watcher = PolicyWatcher(policy_dir, SERVERS, interval=0.2)
    before = watcher.current
    path = policy_dir / "a.yaml"

    with path.open("w") as f:  # an in-place write, caught between its two halves
        f.write(FIRST)
        f.flush()
        check = asyncio.create_task(watcher.check())
        await asyncio.sleep(0.02)
        f.write(SECOND)
    assert await check is False  # it changed while settling: nothing installed
    assert watcher.current is before and watcher.reload_failures == 0
    assert await watcher.check() is True  # the whole file, once it stayed the same
    assert [r.name for r in watcher.current.rules] == ["eng-read", "eng-search"]
    assert decide(watcher.current, who("alice", "eng"), "github", GET).allowed
