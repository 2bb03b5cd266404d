"""A policy file caught half-written is never installed (found by bench/faults/policy_reload.py under load).

The first half of a two-rule file that ends between the rules is a valid policy with a rule missing: installed,
it decided real requests (eng's calls fell to default deny while the file was being copied).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from policy_helpers import SERVERS, who, write

from extproc.mcp.jsonrpc import McpCall
from extproc.policy import PolicyWatcher, decide, load_policy
from extproc.policy.loader import FileChanging, read_stable

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


@pytest.mark.parametrize("looks", [1, 3, 10], ids=["one-look", "three-looks", "ten-looks"])
async def test_a_writer_paused_mid_file_never_gets_its_half_compiled(policy_dir: Path, looks: int) -> None:
    """Half a file, then a pause of any length (every look of the watcher happens inside it), then the rest: the
    half is never compiled, however long it stays the same, because the file is still open for writing."""
    write(policy_dir, "a.yaml", INITIAL)
    watcher = PolicyWatcher(policy_dir, SERVERS, interval=0.01)
    before = watcher.current
    path = policy_dir / "a.yaml"

    with path.open("w") as f:  # in place, no atomic rename
        f.write(FIRST)
        f.flush()
        for _ in range(looks):  # each look settles and loads in full: the pause outlasts any settle time
            assert await watcher.check() is False
            assert watcher.current is before
        with pytest.raises(FileChanging, match="open for writing"):
            load_policy(policy_dir, SERVERS)
        f.write(SECOND)
    assert watcher.reload_failures == 0  # a file being written is not a broken policy
    assert await watcher.check() is True
    assert [r.name for r in watcher.current.rules] == ["eng-read", "eng-search"]


def test_a_file_that_reads_differently_twice_is_not_compiled(policy_dir: Path) -> None:
    """Bytes that differ between the two reads (a writer that closed in between) are refused, named."""
    write(policy_dir, "a.yaml", INITIAL)
    path = policy_dir / "a.yaml"
    reads = iter([FIRST.encode(), (FIRST + SECOND).encode()])
    with pytest.raises(FileChanging, match="changed while it was read"):
        read_stable(path, reader=lambda fd: next(reads))
