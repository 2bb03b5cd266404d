"""Two audit service replicas (two processes) sharing the login key file and one PostgreSQL index: a login made on
one works on the other with no sticky routing, a logout on either ends it on both, a tampered or foreign cookie
is refused, and both list the same sessions while only one of them indexes."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import psycopg
import pytest
import yaml
import zygote
from gateway_parts import ForkedStack, recording_key

from extproc.audit.index_db import LEADER_LOCK
from extproc.audit.sealed import new_key_line
from extproc.audit.web import LOGIN_COOKIE, SESSION_COOKIE
from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import run_session
from extproc.launcher import Stack, audit_command, can_connect, free_port, http_ok, wait_until
from extproc.recording.manifest import generate_keys

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
viewers:
  - name: team-a-sees-alpha
    subjects: {groups: [team-a]}
    servers: [alpha]
    sessions: all
"""


class Replicas:
    def __init__(
        self, stack: Stack, issuer: DevIssuer, ports: tuple[int, int], key: str, second: subprocess.Popen[bytes],
        url: str,
    ) -> None:  # fmt: skip
        self.stack, self.issuer, self.key, self.second, self.url = stack, issuer, key, second, url
        self.bases = [f"http://127.0.0.1:{p}/audit" for p in ports]

    def indexer_pid(self) -> int | None:
        """The OS process holding the indexer's advisory lock (named in its connection's application_name)."""
        with psycopg.connect(self.url) as db:
            rows = db.execute(
                "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.locktype = 'advisory' AND l.granted AND l.objid = %s",
                (LEADER_LOCK & 0xFFFFFFFF,),
            ).fetchall()
        return int(rows[0][0].rsplit(" ", 1)[1]) if rows else None


@pytest.fixture
def replicas(tmp_path: Path, postgres_url: str) -> Iterator[Replicas]:
    work = tmp_path
    port = free_port()
    mcp = zygote.spawn("extproc.demo.mcp_server", ["--port", str(port), "--name", "alpha"], work / "mcp.log")
    stack: Stack | None = None
    second: subprocess.Popen[bytes] | None = None
    try:
        with DevIssuer(work / "issuer") as issuer:
            wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/_seen"), 20, "the MCP server")
            key, _ = generate_keys(work / "keys")
            (work / "policies").mkdir()
            (work / "policies" / "policy.yaml").write_text(POLICY)
            (work / "login-keys").write_text(new_key_line("k1") + "\n")
            listen, ports = free_port(), (free_port(), free_port())
            audit = {
                "port": ports[0], "index_interval_ms": 100, "client_id": "audit-viewer", "index": postgres_url,
                "login_keys_file": str(work / "login-keys"),
            }  # fmt: skip
            config: dict[str, Any] = {
                "listen": {"address": "127.0.0.1", "port": listen},
                "processor": {"address": f"127.0.0.1:{free_port(block=8)}"},
                "admin": {"port": free_port()},
                "servers": [{"name": "alpha", "upstream": f"127.0.0.1:{port}"}],
                "auth": {"public_url": f"http://127.0.0.1:{listen}", "issuers": [{"issuer": issuer.url}]},
                "policy": {"directory": str(work / "policies"), "reload_interval_ms": 200},
                "recording": {
                    "directory": str(work / "recordings"), "signing_key": str(key), "flush_interval_ms": 20,
                    "segment_max_age_ms": 100,
                },
                "audit": audit,
            }  # fmt: skip
            (work / "gateway.yaml").write_text(yaml.safe_dump(config))
            stack = ForkedStack(config=work / "gateway.yaml", workdir=work).start(log=work / "gateway.log")
            # The second replica: the same configuration on another port (as a second pod would run it).
            config["audit"] = {**audit, "port": ports[1]}
            (work / "replica2.yaml").write_text(yaml.safe_dump(config))
            with (work / "replica2.log").open("wb") as log:
                second = subprocess.Popen(audit_command(work / "replica2.yaml"), stdout=log, stderr=log)
            wait_until(lambda: can_connect(f"127.0.0.1:{ports[1]}"), 30, "the second audit replica")
            token = issuer.mint("bob", aud=stack.endpoint, groups=[])
            result = asyncio.run(run_session(stack.url("alpha"), token, progress=False, mode="legacy"))
            yield Replicas(stack, issuer, ports, recording_key(result.session_id, "alpha"), second, postgres_url)
    finally:
        if second is not None:
            second.terminate()
            second.wait(20)
        if stack is not None:
            stack.stop()
        mcp.terminate()
        mcp.wait(10)


def _cookie(name: str, value: str) -> dict[str, str]:
    return {"cookie": f"{name}={value}"}


def test_a_login_on_one_replica_works_on_the_other_and_a_logout_ends_it_on_both(replicas: Replicas) -> None:
    one, two = replicas.bases
    with httpx.Client(timeout=30) as http:
        started = http.get(f"{one}/login", params={"next": "/audit/?user=bob"})  # started on replica one
        assert started.status_code == 302, started.text
        params = dict(parse_qsl(urlsplit(started.headers["location"]).query))
        back = httpx.post(
            started.headers["location"].split("?", 1)[0],
            data={**params, "username": "alice", "groups": "team-a"},
            timeout=10,
        )
        assert back.status_code == 302, back.text
        # The identity provider's redirect lands on replica two (no sticky routing): it finishes the login.
        callback = "/audit/callback?" + urlsplit(back.headers["location"]).query
        done = http.get(
            f"{two}{callback.removeprefix('/audit')}", headers=_cookie(LOGIN_COOKIE, started.cookies[LOGIN_COOKIE])
        )
        assert done.status_code == 303 and done.headers["location"] == "/audit/?user=bob", done.text
        login = done.cookies[SESSION_COOKIE]
        me = [http.get(f"{base}/api/me", headers=_cookie(SESSION_COOKIE, login)) for base in (one, two)]
        assert [r.status_code for r in me] == [200, 200] and me[0].json()["username"] == "alice"
        csrf = me[0].json()["csrf"]
        assert csrf == me[1].json()["csrf"]

        # Both replicas list the recorded session from the one shared index.
        def listed(base: str) -> bool:
            r = http.get(f"{base}/api/sessions", headers=_cookie(SESSION_COOKIE, login))
            return r.status_code == 200 and replicas.key in {s["session"] for s in r.json()["sessions"]}

        wait_until(lambda: listed(one) and listed(two), 30, "the session listed by both replicas", 0.2)

        # A tampered cookie, or one sealed by another deployment's key, is refused.
        tampered = login[:-4] + ("AAAA" if not login.endswith("AAAA") else "BBBB")
        assert http.get(f"{one}/api/me", headers=_cookie(SESSION_COOKIE, tampered)).status_code == 401

        # Logout on replica one (CSRF token needed): replica two refuses the cookie from then on.
        refused = http.post(f"{one}/logout", headers=_cookie(SESSION_COOKIE, login))
        assert refused.status_code == 403
        out = http.post(f"{one}/logout", headers={"x-csrf-token": csrf, **_cookie(SESSION_COOKIE, login)})
        assert out.status_code == 303
        assert http.get(f"{one}/api/me", headers=_cookie(SESSION_COOKIE, login)).status_code == 401  # at once
        # Replica two keeps its last lookup of this login for a second (REVOCATION_CHECK_S), then refuses it too.
        wait_until(
            lambda: http.get(f"{two}/api/me", headers=_cookie(SESSION_COOKIE, login)).status_code == 401,
            5, "replica two to refuse the logged-out cookie", 0.1,
        )  # fmt: skip


def test_one_replica_indexes_and_the_other_takes_over_when_it_is_killed(replicas: Replicas) -> None:
    assert replicas.stack.audit is not None
    pids = {replicas.stack.audit.pid: 0, replicas.second.pid: 1}
    wait_until(lambda: replicas.indexer_pid() in pids, 30, "one replica to hold the indexer's lock", 0.1)
    leader = replicas.indexer_pid()
    assert leader is not None
    survivor = replicas.bases[1 - pids[leader]]
    headers = {
        "authorization": f"Bearer {replicas.issuer.mint('alice', aud=replicas.stack.endpoint, groups=['team-a'])}"
    }

    def listed(key: str) -> bool:
        r = httpx.get(f"{survivor}/api/sessions", headers=headers, timeout=10)
        return r.status_code == 200 and key in {s["session"] for s in r.json()["sessions"]}

    wait_until(lambda: listed(replicas.key), 30, "the first session indexed", 0.2)
    # The indexer dies (kill -9: no goodbye); its connection ends, the lock goes with it.
    (replicas.stack.audit if replicas.stack.audit.pid == leader else replicas.second).kill()
    wait_until(lambda: replicas.indexer_pid() not in (None, leader), 30, "the survivor to take the lock", 0.1)
    token = replicas.issuer.mint("bob", aud=replicas.stack.endpoint, groups=[])
    result = asyncio.run(run_session(replicas.stack.url("alpha"), token, progress=False, mode="legacy"))
    wait_until(
        lambda: listed(recording_key(result.session_id, "alpha")), 30, "a new session indexed by the survivor", 0.2
    )
