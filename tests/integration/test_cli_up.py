"""`mcp-extproc up`: starts Envoy + the processor, prints the endpoint, stops both cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
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


def _write_config(tmp_path: Path, upstream: str) -> tuple[Path, int]:
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": port},
                "processor": {"address": f"unix:{tmp_path}/p.sock"},
                "admin": {"port": free_port()},
                "servers": [{"name": "demo", "upstream": upstream}],
                "recording": {"directory": "rec", "flush_interval_ms": 50},
                "edge": {"drain_time_s": 2},
                "allow_anonymous": True,
            }
        )
    )
    return config, port


async def _works(url: str) -> bool:
    try:
        result = await call_tool(url, "echo", {"text": "again"})
    except Exception:  # the SDK raises on the 5xx of a request that met the dead processor
        return False
    return result["structuredContent"] == {"result": "again"}


async def test_up_restarts_a_dead_processor_and_stops_cleanly_on_group_sigterm(start_mcp_server, tmp_path) -> None:
    server = start_mcp_server("demo")
    config, port = _write_config(tmp_path, server.upstream)
    url = f"http://127.0.0.1:{port}/demo/mcp"
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("wb") as o, err.open("wb") as e:
        up = subprocess.Popen(
            [sys.executable, "-m", "extproc", "up", "--config", str(config)], stdout=o, stderr=e, start_new_session=True
        )
    try:
        wait_until(lambda: "gateway up" in out.read_text(), 60, "`up` to report the gateway up")
        pid = int(re.search(r"processors 0: pid (\d+)", out.read_text())[1])  # type: ignore[index]
        slow = asyncio.create_task(call_tool(url, "count_slowly", {"n": 50, "delay": 0.1}))
        await asyncio.sleep(1.5)  # the call is in flight, its exchange open in the processor
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(Exception):  # noqa: B017 (the SDK's error type for a failed stream varies)
            await slow
        deadline = time.monotonic() + 60
        while not await _works(url):
            assert time.monotonic() < deadline, "requests never worked again after the processor died"
            await asyncio.sleep(0.2)
        assert re.search(r"processor 0 \(pid \d+\) exited with -9; restarting in", err.read_text())
        os.killpg(up.pid, signal.SIGTERM)  # what a terminal's Ctrl-C or a service manager does to the group
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    assert "Traceback" not in err.read_text() + out.read_text()
    events = [json.loads(x) for p in (tmp_path / "rec").rglob("*.jsonl") for x in p.read_bytes().splitlines()]
    assert "exchange.incomplete" in {e["type"] for e in events}  # the successor's completer closed the dead one's


def test_up_closes_the_audit_trail_on_ctrl_c_to_its_group(start_mcp_server, issuer, tmp_path: Path) -> None:
    """Ctrl-C in the terminal reaches `up`'s whole process group; the audit service must still close its trail
    (last segment, closing digest) instead of dying when uvicorn re-raises the signal."""
    import httpx

    from extproc.recording.audit import audit
    from extproc.recording.manifest import generate_keys, load_public_key
    from extproc.recording.store.file import FileStore

    server = start_mcp_server("demo")
    generate_keys(tmp_path / "keys")
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "p.yaml").write_text(
        "apiVersion: mcp-extproc/v1\nrules:\n  - name: all\n    effect: allow\n"
        "    subjects: {users: ['*']}\n    targets: {servers: ['*'], methods: ['*']}\n"
        "viewers:\n  - name: everyone-sees-all\n    subjects: {users: ['*']}\n    servers: ['*']\n    sessions: all\n"
    )
    port = free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": {"port": port},
                "processor": {"address": f"unix:{tmp_path}/p.sock"},
                "admin": {"port": free_port()},
                "servers": [{"name": "demo", "upstream": server.upstream}],
                "recording": {"directory": "rec", "signing_key": str(tmp_path / "keys" / "signing.key")},
                "auth": {"public_url": f"http://127.0.0.1:{port}", "issuers": [{"issuer": issuer.url}]},
                "policy": {"directory": "policies"},
                "audit": {"port": free_port()},
                "edge": {"drain_time_s": 1},
            }
        )
    )
    out, err = tmp_path / "up.out", tmp_path / "up.err"
    with out.open("wb") as o, err.open("wb") as e:
        up = subprocess.Popen(
            [sys.executable, "-m", "extproc", "up", "--config", str(config)], stdout=o, stderr=e, start_new_session=True
        )
    try:
        wait_until(lambda: "gateway up" in out.read_text(), 60, "`up` to report the gateway up")
        token = issuer.mint("alice", aud=f"http://127.0.0.1:{port}")
        r = httpx.get(
            f"http://127.0.0.1:{port}/audit/api/sessions", headers={"authorization": f"Bearer {token}"}, timeout=30
        )
        assert r.status_code == 200, r.text  # one access on the trail
        os.killpg(up.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
    result = audit(FileStore(tmp_path / "rec"), load_public_key(tmp_path / "keys" / "signing.pub"))
    assert result.findings == []
    assert not [n for n in result.notes if "no closing digest" in n], result.notes
    assert result.sessions >= 1  # the trail's day session is listed by a digest


def test_up_names_an_upstream_nothing_answers_for(start_mcp_server, tmp_path: Path) -> None:
    """A newcomer's `up` against servers that are not running says so once, with the way out, at start."""
    server = start_mcp_server("demo")
    missing = f"127.0.0.1:{free_port()}"
    config, _ = _write_config(tmp_path, server.upstream)
    doc = yaml.safe_load(config.read_text())
    doc["servers"].append({"name": "github", "upstream": missing})
    config.write_text(yaml.safe_dump(doc))
    out = tmp_path / "up.out"
    with out.open("wb") as o:
        up = subprocess.Popen([sys.executable, "-m", "extproc", "up", "--config", str(config)], stdout=o, stderr=o)
    try:
        wait_until(lambda: "gateway up" in out.read_text(), 60, "`up` to report the gateway up")
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
    finally:
        if up.poll() is None:
            up.kill()
    text = " ".join(out.read_text().split())  # rich wraps long lines
    assert f"WARNING upstream github: {missing}: TCP connect failed" in text
    assert "upstream demo" not in text
    assert "mcp-extproc demo --keep" in text
