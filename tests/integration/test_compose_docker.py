"""The Compose quick start for real, where a Docker engine exists: build the image (docker SDK), bring the stack
up, run the `client` service (a token from the dev issuer, one MCP session through Envoy), check the recording.

Where no engine is reachable (as on the CI machines) this reports a skip with the reason; tests/unit/test_deploy.py
checks everything short of running containers (compose file, build context, entrypoints, keys, identity).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ["docker", "compose", "-f", str(ROOT / "deploy" / "compose.yaml"), "-p", "mcp-extproc-test"]


@pytest.fixture(scope="module")
def engine() -> Iterator[object]:
    docker = pytest.importorskip("docker", reason="the docker SDK is not installed")
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # DockerException and friends: no socket, no permission, engine down
        pytest.skip(f"no Docker engine reachable: {type(e).__name__}: {e}")
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI (with compose) is not installed")
    yield client


def test_compose_up_token_and_one_session(engine) -> None:
    engine.images.build(path=str(ROOT), dockerfile="deploy/Dockerfile", tag="mcp-extproc:dev", rm=True)  # type: ignore[attr-defined]
    try:
        subprocess.run([*COMPOSE, "up", "-d", "--wait"], check=True, timeout=600)
        run = subprocess.run([*COMPOSE, "run", "--rm", "client"], capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        result = json.loads(run.stdout[run.stdout.index("{") :])
        assert result["session_id"] and result["echo"]["content"][0]["text"] == "hello"
        sessions = subprocess.run(
            [*COMPOSE, "exec", "-T", "processor", "mcp-extproc", "sessions", "list", "--json",
             "--config", "/etc/mcp-extproc/gateway.yaml"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert sessions.returncode == 0 and json.loads(sessions.stdout), sessions.stderr
    finally:
        subprocess.run([*COMPOSE, "down", "-v"], timeout=300)
