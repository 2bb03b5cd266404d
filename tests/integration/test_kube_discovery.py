"""Kubernetes discovery through real Envoy: a labelled Service appears -> reachable, deleted -> 404, API server
down -> the last known set keeps routing. The API server is a loopback stand-in speaking the Kubernetes JSON."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_parts import ACCEPT, open_session
from kube_api import FakeKubeApi

from extproc.launcher import wait_until

LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}


@pytest.fixture
def kube_api() -> Iterator[FakeKubeApi]:
    api = FakeKubeApi().start()
    yield api
    api.stop()


def discovery(api: FakeKubeApi, tmp_path: Path) -> dict:
    kubeconfig = str(api.kubeconfig(tmp_path / "kubeconfig"))
    cfg = {"kubeconfig": kubeconfig, "namespaces": ["team-a"], "watch_timeout_s": 5, "retry_s": 0.2}
    return {"kubernetes": {**cfg, "request_timeout_s": 2}}


def _status(url: str, token: str) -> int:
    headers = {**ACCEPT, "authorization": f"Bearer {token}"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    return httpx.post(url, json=init, headers=headers, timeout=10).status_code


def test_labelled_service_comes_and_goes_without_restart(
    start_mcp_server, start_authed, issuer, kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    server = start_mcp_server("tickets")
    gw = start_authed([], gateway={"server_entries": [], "discovery": discovery(kube_api, tmp_path)})
    token = issuer.mint("alice", aud=gw.endpoint, groups=("team-a",))
    url = gw.url("tickets")
    assert _status(url, token) == 404

    kube_api.put_service("team-a", "tickets", server.port, {"mcp-extproc.io/server": "tickets"})
    wait_until(lambda: _status(url, token) == 200, 10, "discovered server reachable")
    headers = open_session(url, token)
    assert httpx.post(url, json=LIST, headers=headers, timeout=10).status_code == 200

    kube_api.stop()  # API server down: routing keeps the last known set
    assert httpx.post(url, json=LIST, headers=headers, timeout=10).status_code == 200
    kube_api.start()
    kube_api.delete_service("team-a", "tickets")
    wait_until(lambda: _status(url, token) == 404, 10, "deleted server gone")
    gw.stop()
    starts = [e for p in gw.store.root.rglob("*.jsonl") for e in _events(p) if e.get("type") == "exchange.start"]
    assert {e["backend"] for e in starts if e["server"] == "tickets"} == {"team-a/tickets"}


def _events(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
