"""Two full gateways (two Envoys, two processors with two workers each) behind a round-robin "load balancer": they
share the session key file, one recording store (a file directory, or a bucket on moto's S3) and one PostgreSQL
audit index. The official SDK's clients
alternate between them: a 2025 session and a 2026-07-28 run are each one session in both audit replicas' API and
one verified unit holding every writer's signed stream; a replica killed in the middle of a run loses no recorded
exchange, and the run is incomplete only at the call that was cut."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import httpx2
import pytest
import zygote
from gateway_parts import ACCEPT, Gateway, SampleServer, recording_key
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from moto.server import ThreadedMotoServer
from redis_server import RedisServer

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import RECORDING_HEADER
from extproc.launcher import free_port, wait_until
from extproc.recording.manifest import generate_keys
from extproc.recording.replay import load_session
from extproc.recording.store import Store
from extproc.recording.store.file import FileStore
from extproc.recording.store.s3 import S3Store

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: add-budget
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [add]}
    limits:
      - {calls: 3, per: 1m}
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
viewers:
  - name: auditors-see-all
    subjects: {groups: [auditors]}
    servers: [demo]
    sessions: all
"""


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer with no stickiness: each request goes to the next replica's Envoy in turn."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports  # replicas still in rotation (a test takes a dead one out, as health checks would)
        self.landed: list[int] = []
        self.last_meta: dict[str, Any] | None = None  # the SDK's _meta envelope, to send a call of the same run
        self._inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self.ports[len(self.landed) % len(self.ports)]
        self.landed.append(port)
        if request.method == "POST" and request.content:
            meta = json.loads(request.content).get("params", {}).get("_meta")
            self.last_meta = meta if meta and "io.modelcontextprotocol/clientInfo" in meta else self.last_meta
        request.url = request.url.copy_with(port=port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class Replicas:
    gateways: list[Gateway]
    store: Store
    public_key: Path
    token: str  # a caller's
    auditor: str  # an auditor's token for the audit API
    replica_of: dict[int, int]  # processor pid -> replica (0 or 1)

    @property
    def ports(self) -> list[int]:
        return [gw.config["listen"]["port"] for gw in self.gateways]

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/demo/mcp"

    def writers_of(self, unit: str) -> dict[str, int]:
        """The writers that recorded ``unit``, each with the replica (0 or 1) whose processor it was."""
        return {w: self.replica_of.get(int(w.split("-")[-2]), -1) for w in self.store.read_session(unit)}

    def listed(self, replica: int, unit: str) -> list[dict[str, Any]]:
        """The rows of audit replica ``replica``'s session list naming ``unit``."""
        audit = self.gateways[replica].config["audit"]["port"]
        r = httpx.get(
            f"http://127.0.0.1:{audit}/audit/api/sessions",
            headers={"authorization": f"Bearer {self.auditor}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        return [s for s in r.json()["sessions"] if s["session"] == unit]


@pytest.fixture
def bucket(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """A bucket on a moto S3 server on loopback; the ``recording.s3`` section naming it."""
    for k, v in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(k, v)  # the processors, audit services and CLI find credentials here
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(Bucket="recordings")
        yield {"bucket": "recordings", "prefix": "rec", "endpoint_url": url, "region": "us-east-1"}
    finally:
        server.stop()


@pytest.fixture(params=["file", "s3"])
def replicas(
    request: pytest.FixtureRequest,
    start_mcp_server: Callable[..., SampleServer],
    start_gateway: Callable[..., Gateway],
    issuer: DevIssuer,
    postgres_url: str,
    tmp_path: Path,
) -> Iterator[Replicas]:
    server = start_mcp_server("demo")
    redis = RedisServer(tmp_path / "redis").start()  # the budgets both replicas count in (policy rule add-budget)
    request.addfinalizer(redis.stop)
    key, pub = generate_keys(tmp_path / "keys")
    (tmp_path / "session.key").write_text(secrets.token_hex(32))
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "policy.yaml").write_text(POLICY)
    shared = tmp_path / "recordings"
    s3: dict[str, Any] = request.getfixturevalue("bucket") if request.param == "s3" else {}
    store: Store = (
        FileStore(shared)
        if not s3
        else S3Store(s3["bucket"], s3["prefix"], endpoint_url=s3["endpoint_url"], region="us-east-1")
    )
    public_url = f"http://127.0.0.1:{free_port()}"  # the load balancer's address: the tokens' audience
    gateways = []
    for _ in range(2):
        gateways.append(
            start_gateway(
                [server],
                listen={"port": free_port()},
                processor={"workers": 2},
                auth={
                    "public_url": public_url,
                    "issuers": [{"issuer": issuer.url}],
                    "session_secret_file": str(tmp_path / "session.key"),
                },
                policy={"directory": str(tmp_path / "policies"), "reload_interval_ms": 200},
                recording={
                    "directory": str(shared),
                    "signing_key": str(key),
                    "flush_interval_ms": 20,
                    "segment_max_age_ms": 100,
                    "completer_interval_s": 0.5,
                    "run_idle_gap_s": 86_400,  # one run per day: this test never straddles two
                    **({"store": "s3", "s3": s3} if s3 else {}),  # the spool stays in the shared directory
                },
                audit={"port": free_port(), "index": postgres_url, "index_interval_ms": 100},
                budgets={"store": redis.url, "timeout_ms": 2000},
            )
        )
    yield Replicas(
        gateways,
        store,
        pub,
        issuer.mint("alice", aud=public_url, groups=["eng"]),
        issuer.mint("auditor", aud=public_url, groups=["auditors"]),
        {p.pid: i for i, gw in enumerate(gateways) for p in gw.stack.processors},
    )


def _cli(replicas: Replicas, *args: str) -> subprocess.CompletedProcess[str]:
    """A ``sessions`` command reading the shared store as gateway one's config names it."""
    args = (*args, "--config", str(replicas.gateways[0].stack.config))
    env = {**os.environ, "COLUMNS": "250"}
    return zygote.run_command([sys.executable, "-m", "extproc", *args], timeout=60, env=env)


async def _client_calls(
    replicas: Replicas, balancer: RoundRobin, mode: str, calls: int, adds: list[bool] | None = None
) -> tuple[str, list[str]]:
    """An SDK client through the balancer: list tools, then ``calls`` echo calls, then (``adds``) add calls, each
    one's outcome appended (passed or refused by its budget); its unit and the runs named."""
    runs: list[str] = []
    session: list[str] = []

    async def tap(response: httpx2.Response) -> None:
        if (run := response.headers.get(RECORDING_HEADER)) is not None:
            runs.append(run)
        if not session and (sid := response.headers.get("mcp-session-id")):
            session.append(sid)

    headers = {"authorization": f"Bearer {replicas.token}"}
    async with httpx2.AsyncClient(
        transport=balancer, headers=headers, timeout=httpx2.Timeout(30.0), event_hooks={"response": [tap]}
    ) as http:
        async with Client(
            streamable_http_client(replicas.url(balancer.ports[0]), http_client=http), mode=mode, cache=None
        ) as client:
            assert [t.name for t in (await client.list_tools()).tools][:2] == ["echo", "add"]
            for i in range(calls):
                result = await client.call_tool("echo", {"text": f"call {i}"})
                assert result.structured_content == {"result": f"call {i}"}
            for i in range(len(adds or [])):
                try:
                    passed = (await client.call_tool("add", {"a": i, "b": 1})).structured_content == {"result": i + 1}
                except Exception as e:  # the SDK raises the gateway's JSON-RPC refusal
                    assert "add-budget" in str(e), e
                    passed = False
                adds[i] = passed  # type: ignore[index]  # only reached with adds
    return (recording_key(session[0]) if session else runs[0]), runs


def _verified(replicas: Replicas, unit: str) -> str:
    done = _cli(replicas, "sessions", "verify", unit, "--public-key", str(replicas.public_key))
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.parametrize("mode", ["legacy", "2026-07-28"])
def test_a_session_or_run_across_two_replicas_is_one_session(replicas: Replicas, mode: str) -> None:
    balancer = RoundRobin(replicas.ports)
    adds = [False] * (5 if mode == "legacy" else 0)
    unit, runs = asyncio.run(_client_calls(replicas, balancer, mode, calls=8, adds=adds))
    assert set(balancer.landed) == set(replicas.ports)  # every other request on each replica
    # One budget across both replicas and their workers (one Redis): 3 of 5 add calls pass, wherever they land
    # (each worker counting alone would let every one of them through).
    if mode == "legacy":
        assert adds == [True] * 3 + [False] * 2
    if mode != "legacy":
        assert set(runs) == {unit}  # every worker of both replicas named the same run

    # Both audit replicas (one PostgreSQL index) list it as one session holding every exchange of both gateways.
    def one_row_each() -> bool:
        rows = [replicas.listed(i, unit) for i in (0, 1)]
        return all(len(r) == 1 and r[0]["exchanges"] == len(balancer.landed) for r in rows)

    wait_until(one_row_each, 30, "both audit replicas to list the session once, whole", 0.2)
    writers = replicas.writers_of(unit)
    for i in (0, 1):  # either replica's API proves every writer's part of it
        audit = replicas.gateways[i].config["audit"]["port"]
        r = httpx.get(
            f"http://127.0.0.1:{audit}/audit/api/sessions/{unit}/verify",
            headers={"authorization": f"Bearer {replicas.auditor}"},
            timeout=30,
        )
        assert r.status_code == 200 and r.json()["verified"] and r.json()["writers"] == sorted(writers), r.text
    for gw in replicas.gateways:
        gw.stack.stop()  # each writer's final manifest: the unit is complete

    assert set(writers.values()) == {0, 1}, writers  # both replicas wrote their own stream of the one unit
    session = load_session(replicas.store, unit, None)
    starts = [e for e in session.events if e["type"] == "exchange.start"]
    sent = [m["method"] for e in session.events if e["type"] == "mcp.request" for m in e["messages"]]
    assert sent.count("tools/call") == 8 + len(adds) and session.summary()["state"] == "complete"
    assert f"in {len(writers)} stream(s), signatures checked" in _verified(replicas, unit)
    shown = json.loads(_cli(replicas, "sessions", "show", unit, "--json").stdout)
    assert len(shown["exchanges"]) == len(starts)  # one session, every writer's exchanges merged in time order


def test_a_replica_killed_mid_run_loses_no_recorded_exchange(replicas: Replicas) -> None:
    balancer = RoundRobin(replicas.ports)
    unit, _ = asyncio.run(_client_calls(replicas, balancer, "2026-07-28", calls=4))
    assert balancer.last_meta is not None
    victim, survivor = replicas.gateways[1], replicas.gateways[0]
    call = {
        "jsonrpc": "2.0",
        "id": 99,
        "method": "tools/call",
        "params": {
            "name": "count_slowly",
            "arguments": {"n": 60, "delay": 0.1},
            "_meta": {**balancer.last_meta, "progressToken": "p"},
        },
    }
    headers = {
        **ACCEPT,
        "authorization": f"Bearer {replicas.token}",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "count_slowly",
    }
    progress = 0
    try:  # the run's long call lands on replica two, which dies (kill -9: all its processes) while it streams
        with httpx.stream("POST", replicas.url(replicas.ports[1]), json=call, headers=headers, timeout=30) as r:
            assert r.headers[RECORDING_HEADER] == unit
            for line in r.iter_lines():
                progress += '"notifications/progress"' in line
                if progress == 5:
                    for p in [*victim.stack.processors, victim.stack.envoy, victim.stack.audit]:
                        assert p is not None
                        p.kill()
    except httpx.HTTPError:
        pass  # the stream is cut
    assert progress >= 5
    # The client goes on with its run on the survivor (the balancer's health check took replica two out).
    balancer.ports = [replicas.ports[0]]
    assert asyncio.run(_client_calls(replicas, balancer, "2026-07-28", calls=2))[0] == unit

    # The survivor's completer adopts the dead writers' spools (the spool directory is shared on this box): their
    # streams are closed and shipped, the cut exchange marked incomplete.
    def cut_marked() -> bool:
        events = load_session(replicas.store, unit, None).events
        return any(e["type"] == "exchange.incomplete" for e in events)

    wait_until(cut_marked, 60, "the cut call to be marked incomplete", 0.2)
    survivor.stack.stop()
    session = load_session(replicas.store, unit, None)
    assert session.problems == [] and session.unfinished == []
    shown = json.loads(_cli(replicas, "sessions", "show", unit, "--json").stdout)
    outcomes = [(x["method"], x["outcome"]) for x in shown["exchanges"]]
    [cut] = [x for x in shown["exchanges"] if x["outcome"] != "complete"]
    assert cut["outcome"] == "incomplete", outcomes
    calls = [m["params"]["name"] for e in cut["events"] if e["type"] == "mcp.request" for m in e["messages"]]
    assert calls == ["count_slowly"]
    notes = [m for e in cut["events"] if e["type"] == "mcp.response" for m in e["messages"]]
    assert sum(m.get("method") == "notifications/progress" for m in notes) >= progress  # all the client got is kept
    sent = [m["method"] for e in session.events if e["type"] == "mcp.request" for m in e["messages"]]
    assert sent.count("tools/call") == 4 + 1 + 2  # every call of the run, on both replicas, in the one unit
    assert set(replicas.writers_of(unit).values()) >= {0, 1}
    assert "state incomplete" in _verified(replicas, unit)
