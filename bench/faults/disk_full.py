"""Disk full for real: the spool on a small tmpfs, filled mid-session; 503s, nothing forwarded unrecorded, recovery.

Needs root (mount). The tmpfs is always unmounted at the end, after the gateway has stopped.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

from bench.faults.client import Client, Tally
from bench.faults.harness import Outcome, Rig, verify_store

# sessions, seconds before / full / after, tmpfs size (room for the traffic's unshipped segments until it is filled)
SCALES = {"small": (10, 5.0, 6.0, 8.0, "8m"), "full": (100, 20.0, 20.0, 30.0, "64m")}
REFUSED = b"recording unavailable; request refused"


def fill(directory: Path, chunk_size: int = 256 << 10) -> int:
    """Append to a filler file until the file system says ENOSPC; bytes added."""
    chunk, n = b"\0" * chunk_size, 0
    with (directory / "filler").open("ab", buffering=0) as f:
        while True:
            try:
                n += f.write(chunk)
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                return n


def keep_full(directory: Path, seconds: float) -> int:
    """Fill the disk, and keep it full for ``seconds`` (the uploader frees spool space as it ships segments)."""
    filled = fill(directory)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        filled += fill(directory, 4096)
        time.sleep(0.02)
    return filled


def run(scale: str) -> Outcome:
    sessions, before_s, full_s, after_s, tmpfs_size = SCALES[scale]
    out = Outcome("disk-full", scale)
    if os.geteuid() != 0:
        out.failures.append("needs root to mount a tmpfs")
        return out
    rig = Rig("diskfull")
    spool = rig.dir / "spool"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={tmpfs_size}", "tmpfs", str(spool)], check=True)
    try:
        servers = [rig.mcp_server("demo"), rig.mcp_server("demojson", True)]
        rig.gateway(recording={"spool_directory": str(spool)})
        phases: dict[str, Counter[int]] = {p: Counter() for p in ("before", "full", "after")}
        answered_by_phase: Counter[str] = Counter()
        tally, phase, refused_ok, without_id = Tally(), ["before"], [0], [0]

        async def drive() -> None:
            client = Client(tally)
            deadline = time.monotonic() + before_s + full_s + after_s

            async def one(i: int) -> None:
                url = rig.url(["demo", "demojson"][i % 2])
                headers = None
                n = 0
                while time.monotonic() < deadline:
                    if headers is None:
                        headers = await client.open_session(url, rig.token(f"user-{i}"))
                        if headers is None:
                            phases[phase[0]][0] += 1
                            await asyncio.sleep(0.2)
                            continue
                    n += 1
                    text = f"d{i}-{n}-" + "x" * 2000
                    before = len(tally.answered)
                    status, reply_headers, body = await client.post(url, _echo(text), headers)
                    phases[phase[0]][status] += 1
                    if status == 200 and b'"result"' in body:
                        tally.answered.add(text)
                        answered_by_phase[phase[0]] += len(tally.answered) - before
                    elif status == 503 and REFUSED in body:
                        refused_ok[0] += 1
                        without_id[0] += not {k.lower() for k in reply_headers} & {"x-request-id"}
                        await asyncio.sleep(0.05)

            try:
                await asyncio.gather(*(one(i) for i in range(sessions)))
            finally:
                await client.close()

        async def faults() -> int:
            await asyncio.sleep(before_s)
            phase[0] = "full"
            filled = await asyncio.to_thread(keep_full, spool, full_s)
            (spool / "filler").unlink()
            phase[0] = "after"
            return filled

        async def both() -> int:
            _, filled = await asyncio.gather(drive(), faults())
            return filled

        filled = asyncio.run(both())
        rig.stop_gateway()
        # what is still in the spool now would be lost with the tmpfs (a real spool keeps it for the next start)
        left = [p for p in spool.rglob("*") if p.suffix in (".seg", ".manifest") and p.name != "head.manifest"]
        out.check(not left, f"{len(left)} segment files still in the spool at shutdown")
        v = verify_store(rig)
        out.check_recordings(rig, v)
        seen = sum(1 for s in servers for r in s.seen() if r["tool"] == "echo")
        out.check(phases["full"][503] > 0, f"no 503 while the spool disk was full: {dict(phases['full'])}")
        # other 503s: the sample server dropping connections under load ("MCP server unavailable"), counted
        upstream_503 = phases["full"][503] + phases["after"][503] + phases["before"][503] - refused_ok[0]
        out.check(answered_by_phase["after"] > 0, "no call answered after space returned")
        recorded = len(v.requested_texts)
        # nothing forwarded unrecorded (a recorded call may still fail to reach an overloaded server)
        out.check(seen <= recorded, f"{seen} echo calls reached the servers, {recorded} recorded")
        unrecorded = tally.answered - v.responded_texts
        out.check(not unrecorded, f"{len(unrecorded)} answered calls without a recorded response")
        other = {s: n for p in phases.values() for s, n in p.items() if s not in (200, 202, 503)}
        out.check(not other, f"unexpected statuses {other}")
        # The operator is told why: the log names the reason, errno and path on entering and on leaving the state.
        text = rig.log.read_text(errors="replace")
        entering = re.findall(r"recording unavailable \(disk_full\): .*\(ENOSPC\)", text)
        leaving = len(re.findall(r"recording available again \(was disk_full", text))
        out.check(bool(entering) and all(str(spool) in e for e in entering), "the log does not name ENOSPC and path")
        out.check(leaving > 0, "the log never says the recording is available again")
        out.check(without_id[0] == 0, f"{without_id[0]} refusals (503) without an x-request-id")
        out.figures.update(
            tmpfs=tmpfs_size,
            filler_mib=round(filled / (1 << 20), 1),
            sessions=sessions,
            phases={p: dict(c) for p, c in phases.items()},
            answered=dict(answered_by_phase),
            forwarded_echo=seen,
            upstream_503=upstream_503,
            recorded_echo=len(v.requested_texts),
            unavailable_logged=len(entering),
            available_again_logged=leaving,
        )
        out.summary = (
            f"{sessions} sessions on a {tmpfs_size} tmpfs spool, filled for {full_s:.0f} s: "
            f"before {dict(phases['before'])}, full {dict(phases['full'])}, after {dict(phases['after'])}; "
            f"{seen} echo calls reached servers, {len(v.requested_texts)} recorded; {upstream_503} 503s from the "
            f"servers; chains and digests verify"
        )
    finally:
        try:
            rig.stop_gateway()
        finally:
            r = subprocess.run(["umount", str(spool)], capture_output=True, text=True)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(spool)], check=False)
            rig.close()
    return out


def _echo(text: str) -> dict[str, object]:
    from bench.faults.client import call_body

    return call_body("echo", {"text": text})
