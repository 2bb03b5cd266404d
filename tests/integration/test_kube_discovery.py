"""Kubernetes discovery through real Envoy: a labelled Service appears -> reachable, deleted -> 404, API server
down -> the last known set keeps routing. The API server is a loopback stand-in speaking the Kubernetes JSON."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_parts import ACCEPT, ALLOW_ALL, open_session
from kube_api import FakeKubeApi

from extproc.launcher import free_port, wait_until

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


RBAC_POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: session-basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, ping, "notifications/*", tools/list]}
  - name: tickets-via-rbac
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [tickets], tools: ["*"]}
    kubernetes: {verb: use, group: mcp-extproc.io, resource: mcpservers, name: tickets, namespace: team-a}
"""


def _call(url: str, headers: dict) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}
    return httpx.post(url, json=body, headers=headers, timeout=15)


def test_subject_access_review_gates_calls_and_fails_closed(
    start_mcp_server, start_authed, issuer, kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    server = start_mcp_server("tickets")
    kube_api.put_service("team-a", "tickets", server.port, {"mcp-extproc.io/server": "tickets"})
    kube_api.sar = lambda spec: (
        {"allowed": True, "reason": 'RBAC: allowed by RoleBinding "mcp-users/team-a"'}
        if "oidc:team-a" in spec["groups"]
        else {"allowed": False, "reason": "no RBAC policy matched"}
    )
    kubernetes = {
        "kubeconfig": str(kube_api.kubeconfig(tmp_path / "kc-sar")),
        "username_prefix": "oidc:",
        "groups_prefix": "oidc:",
        "cache_ttl_s": 0.5,
        "request_timeout_s": 1,
    }
    gw = start_authed(
        [],
        policy=RBAC_POLICY,
        gateway={"server_entries": [], "discovery": discovery(kube_api, tmp_path), "kubernetes": kubernetes},
    )
    url = gw.url("tickets")
    wait_until(lambda: _status(url, issuer.mint("x", aud=gw.endpoint)) == 200, 10, "discovered")
    alice = open_session(url, issuer.mint("alice", aud=gw.endpoint, groups=("team-a",)))
    bob = open_session(url, issuer.mint("bob", aud=gw.endpoint, groups=("team-b",)))

    assert _call(url, alice).status_code == 200
    r = _call(url, bob)
    assert r.status_code == 403 and "default-deny" in r.text
    assert {s["user"] for s in kube_api.reviews} == {"oidc:alice", "oidc:bob"}

    kube_api.stop()
    time.sleep(0.6)  # past the cache TTL: the next call needs the API server
    r = _call(url, alice)
    assert r.status_code == 503 and "authorization service unavailable" in r.text
    # routing kept the last known set: a call needing no review still works
    listed = httpx.post(url, json={"jsonrpc": "2.0", "id": 4, "method": "tools/list"}, headers=alice, timeout=10)
    assert listed.status_code == 200
    gw.stop()

    decisions = [e for p in gw.store.root.rglob("*.jsonl") for e in _events(p) if e.get("type") == "policy.decision"]
    gated = [d for d in decisions if d["kubernetes"] is not None]
    outcomes = {(d["allowed"], d["kubernetes"]["outcome"]) for d in gated}
    assert (True, "allowed") in outcomes and (False, "unavailable") in outcomes
    allowed = next(d for d in gated if d["allowed"])
    assert allowed["kubernetes"]["reason"] == 'RBAC: allowed by RoleBinding "mcp-users/team-a"'


def test_two_workers_share_the_launchers_one_watch_and_follow_readiness(
    start_mcp_server, start_gateway, issuer, kube_api: FakeKubeApi, tmp_path: Path
) -> None:
    server = start_mcp_server("tickets")
    kube_api.put_service("team-a", "tickets", server.port, {"mcp-extproc.io/server": "tickets"})
    secret = tmp_path / "session-secret"
    secret.write_text("s" * 64)
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "policy.yaml").write_text(ALLOW_ALL)
    port = free_port()
    auth = {
        "public_url": f"http://127.0.0.1:{port}",
        "issuers": [{"issuer": issuer.url}],
        "session_secret_file": str(secret),
    }
    gw = start_gateway(
        [], listen={"port": port}, auth=auth, policy={"directory": str(policies), "reload_interval_ms": 200},
        server_entries=[], discovery=discovery(kube_api, tmp_path), processor={"workers": 2},
    )  # fmt: skip
    token = issuer.mint("alice", aud=gw.endpoint, groups=("team-a",))
    url = gw.url("tickets")
    # Both workers route it (Envoy spreads the requests over them), from one watch: the API server saw one list
    # per resource (the launcher's), none per worker.
    wait_until(lambda: all(_status(url, token) == 200 for _ in range(6)), 10, "every worker routes it")
    lists = sorted(r.split("?")[0] for r in kube_api.requests if "watch=" not in r.lower())
    assert lists == ["/api/v1/namespaces/team-a/services", "/apis/discovery.k8s.io/v1/namespaces/team-a/endpointslices"]
    # Every pod behind the Service turns unready: no worker routes it any more; one ready pod brings it back.
    kube_api.set_endpoints("team-a", "tickets", [("10.0.0.1", False)])
    wait_until(lambda: all(_status(url, token) == 404 for _ in range(6)), 10, "withdrawn in every worker")
    kube_api.set_endpoints("team-a", "tickets", [("10.0.0.1", True)])
    wait_until(lambda: all(_status(url, token) == 200 for _ in range(6)), 10, "back in every worker")
