"""The two stdio bridges side by side (extproc/stdio.py): the sample server over stdio behind mcp-proxy and behind
supergateway, and the same server over HTTP with no bridge, each driven by the official SDK client with sequential
tools/call requests. Per call: wall time, and the bridge process's own CPU (not its child's); its memory.

    make stdio-bridge && python bench/stdio_bench.py [--calls 300]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from extproc.demo.mcp_client import connect
from extproc.envoy.config import Server
from extproc.launcher import can_connect, free_port, wait_until
from extproc.stdio import bridge_command

ROOT = Path(__file__).resolve().parents[1]
SERVER = [sys.executable, "-m", "extproc.demo.mcp_server", "--stdio", "--name", "s"]
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime of the process itself


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _calls(url: str, n: int) -> float:
    async with connect(url, mode="legacy") as conn:
        for i in range(20):  # warm-up
            await conn.client.call_tool("echo", {"text": str(i)})
        t0 = time.perf_counter()
        for i in range(n):
            await conn.client.call_tool("echo", {"text": str(i)})
        return (time.perf_counter() - t0) / n


def measure(cmd: list[str], port: int, calls: int) -> dict[str, float]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    try:
        wait_until(lambda: can_connect(f"127.0.0.1:{port}"), 60, cmd[0])
        cpu0 = _cpu_s(proc.pid)
        wall = asyncio.run(_calls(f"http://127.0.0.1:{port}/mcp", calls))
        return {"ms_per_call": wall * 1000, "cpu_ms_per_call": (_cpu_s(proc.pid) - cpu0) * 1000 / (calls + 20),
                "rss_mib": _rss_mib(proc.pid)}  # fmt: skip
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    out: dict[str, dict[str, float]] = {}
    port = free_port()
    direct = [sys.executable, "-m", "extproc.demo.mcp_server", "--port", str(port), "--name", "s"]
    out["http, no bridge"] = measure(direct, port, args.calls)
    for bridge in ("mcp-proxy", "supergateway"):
        port = free_port()
        server = Server.model_validate({"name": "s", "stdio": {"command": SERVER, "port": port, "bridge": bridge}})
        out[bridge] = measure(bridge_command(server), port, args.calls)
    for name, r in out.items():
        print(f"{name:>16}: {r['ms_per_call']:6.2f} ms per tools/call, bridge CPU {r['cpu_ms_per_call']:5.2f} ms "
              f"per call, RSS {r['rss_mib']:.0f} MiB")  # fmt: skip
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "stdio.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
