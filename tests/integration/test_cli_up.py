"""`mcp-extproc up`: starts Envoy + the processor, prints the endpoint, stops both cleanly on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import yaml

from extproc.demo.mcp_client import call_tool
from extproc.launcher import free_port, http_ok, wait_until


async def test_up_serves_records_and_stops_on_sigterm(start_mcp_server, tmp_path: Path) -> None:
    server = start_mcp_server("demo")
    port, admin = free_port(), free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": port},
                "processor": {"address": f"unix:{tmp_path}/p.sock"},
                "admin": {"port": admin},
                "servers": [{"name": "demo", "upstream": server.upstream}],
                "recording": {"directory": "rec"},  # relative to the config file
                "allow_anonymous": True,
            }
        )
    )
    out = tmp_path / "up.log"
    with out.open("wb") as log:
        up = subprocess.Popen([sys.executable, "-m", "extproc", "up", "--config", str(config)], stdout=log, stderr=log)
    try:
        wait_until(lambda: "gateway up" in out.read_text(), 30, "`up` to report the gateway up")
        assert f"http://127.0.0.1:{port}/demo/mcp" in out.read_text()
        result = await call_tool(f"http://127.0.0.1:{port}/demo/mcp", "echo", {"text": "via up"})
        assert result["structuredContent"] == {"result": "via up"}
        up.send_signal(signal.SIGTERM)
        assert up.wait(30) == 0
    finally:
        if up.poll() is None:
            up.kill()
    assert not http_ok(f"http://127.0.0.1:{admin}/ready")  # Envoy is gone
    assert not (tmp_path / "p.sock").exists() or not _connectable(tmp_path / "p.sock")
    recorded = b"".join(p.read_bytes() for p in (tmp_path / "rec").rglob("*.jsonl"))
    assert b"via up" in recorded


def _connectable(path: Path) -> bool:
    from extproc.launcher import can_connect

    return can_connect(f"unix:{path}")
