"""The audit service through real Envoy: tokens from the local issuer, recordings made by real SDK MCP sessions."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from gateway_parts import Gateway, recording_key

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect, run_session
from extproc.launcher import free_port, wait_until
from extproc.recording.manifest import generate_keys

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
recording:
  - servers: [alpha]
    redact:
      - name: echo-text
        path: /params/arguments/text
viewers:
  - name: team-a-sees-alpha
    subjects: {groups: [team-a]}
    servers: [alpha]
    sessions: all
  - name: carol-sees-her-own
    subjects: {users: [carol]}
    servers: ["*"]
    sessions: own
  - name: security-reads-the-trail
    subjects: {groups: [security]}
    servers: [audit]
    sessions: all
"""


class Audit:
    """A gateway with the audit service, and tokens for its people."""

    def __init__(self, gw: Gateway, issuer: DevIssuer, pub: Path) -> None:
        self.gw, self.issuer, self.pub = gw, issuer, pub
        self.base = f"{gw.endpoint}/audit"

    def token(self, who: str, *groups: str, **kw: Any) -> str:
        return self.issuer.mint(who, aud=self.gw.endpoint, groups=list(groups), **kw)

    def get(self, who: str | None, path: str, *groups: str, **params: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token(who, *groups)}"} if who else {}
        return httpx.get(f"{self.base}{path}", params=params, headers=headers, timeout=30)

    def keys(self, who: str, *groups: str, **filters: Any) -> list[str]:
        """Every session key the caller may list, following cursors one row at a time."""
        out: list[str] = []
        cursor = None
        while True:
            params = {**filters, "limit": 1, **({"cursor": cursor} if cursor else {})}
            r = self.get(who, "/api/sessions", *groups, **params)
            assert r.status_code == 200, r.text
            doc = r.json()
            out += [s["session"] for s in doc["sessions"]]
            cursor = doc["next_cursor"]
            if cursor is None:
                return out


@pytest.fixture
def audit(start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path) -> Audit:
    key, pub = generate_keys(tmp_path / "keys")
    servers = [start_mcp_server("alpha"), start_mcp_server("beta")]
    gateway = {
        "recording": {"signing_key": str(key), "segment_max_age_ms": 100, "flush_interval_ms": 20},
        "audit": {"port": free_port(), "index_interval_ms": 100},
    }
    gw = start_authed(servers, policy=POLICY, gateway=gateway)
    return Audit(gw, issuer, pub)


async def _record(a: Audit, who: str, server: str, *groups: str) -> str:
    # The 2025 handshake: its session ends with DELETE, so the recording is final (2026 runs: test_mcp_2026.py).
    result = await run_session(a.gw.url(server), token=a.token(who, *groups), progress=False, mode="legacy")
    assert result.session_id
    return recording_key(result.session_id, server)  # the recording key, as the API lists it


def _wait_listed(a: Audit, keys: set[str]) -> None:
    def indexed() -> bool:
        listed = set(a.keys("auditor-of-all", "team-a")) | set(a.keys("carol"))
        return keys <= listed

    wait_until(indexed, 20, "the sessions to be indexed", interval=0.2)


def _trail(a: Audit) -> list[dict[str, Any]]:
    keys = a.keys("sec", "security", server="audit")
    events: list[dict[str, Any]] = []
    for key in keys:
        r = a.get("sec", f"/api/sessions/{key}/events", "security")
        assert r.status_code == 200, r.text
        events += [json.loads(line) for line in r.text.splitlines()]
    return [e for e in events if e["type"] == "audit.access"]


async def test_viewers_see_only_their_grant_and_every_access_is_on_a_verifiable_trail(audit: Audit, tmp_path: Path):
    a = audit
    bob_alpha = await _record(a, "bob", "alpha", "team-b")
    bob_beta = await _record(a, "bob", "beta", "team-b")
    carol_beta = await _record(a, "carol", "beta")
    carol_alpha = await _record(a, "carol", "alpha")
    _wait_listed(a, {bob_alpha, carol_alpha, carol_beta})

    # Group A's viewer sees server alpha's sessions, everyone's, and nothing of beta.
    alice = set(a.keys("alice", "team-a"))
    assert {bob_alpha, carol_alpha} <= alice and not alice & {bob_beta, carol_beta}
    assert set(a.keys("alice", "team-a", server="beta")) == set()
    assert a.get("alice", f"/api/sessions/{bob_beta}", "team-a").status_code == 404
    # `own`: carol sees exactly her own, on both servers.
    assert set(a.keys("carol")) == {carol_alpha, carol_beta}
    assert a.get("carol", f"/api/sessions/{bob_alpha}").status_code == 404
    # No matching rule: nothing, and a forbidden id answers exactly like an unknown one.
    assert a.keys("dave") == []
    forbidden = a.get("dave", f"/api/sessions/{bob_alpha}")
    unknown = a.get("dave", "/api/sessions/no-such-session")
    assert forbidden.status_code == unknown.status_code == 404
    assert forbidden.json() == unknown.json()
    for path in ("/events", "/verify", "/export", "/replay"):
        assert a.get("alice", f"/api/sessions/{bob_beta}{path}", "team-a").status_code == 404

    # One session: paired calls, decisions with rule names, verification with signatures.
    r = a.get("alice", f"/api/sessions/{bob_alpha}", "team-a")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["session"]["server"] == "alpha" and doc["session"]["user"] == "bob"
    assert doc["verification"]["verified"] and doc["verification"]["signatures_checked"]
    calls = {c["request"].get("method"): c for c in doc["calls"]}
    assert calls["tools/call"]["response"] is not None
    decisions = [e for ex in doc["exchanges"] for e in ex["events"] if e["type"] == "policy.decision"]
    assert decisions and all(d["rule"] == "allow-everything" for d in decisions)
    # Stored redacted, served redacted, the rule named.
    echo = next(c for c in doc["calls"] if (c["request"].get("params") or {}).get("name") == "echo")
    assert echo["request"]["params"]["arguments"]["text"] == "[REDACTED:echo-text]"
    redacted = [e for ex in doc["exchanges"] for e in ex["events"] if e.get("redactions")]
    assert {r["rule"] for e in redacted for r in e["redactions"]} == {"echo-text"}
    verify = a.get("alice", f"/api/sessions/{bob_alpha}/verify", "team-a").json()
    assert verify["verified"] and verify["problems"] == []
    assert a.get("carol", "/api/sessions", state="complete").status_code == 200
    assert set(a.keys("carol", tool="echo")) == {carol_alpha, carol_beta}
    assert a.keys("carol", tool="no-such-tool") == []

    # Export: a bundle `sessions verify --public-key` checks offline.
    r = a.get("carol", f"/api/sessions/{carol_beta}/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    out = tmp_path / "bundle"
    with tarfile.open(fileobj=io.BytesIO(r.content)) as tar:
        tar.extractall(out, filter="data")
    cmd = [sys.executable, "-m", "extproc", "sessions", "verify", carol_beta, "--dir", str(out)]
    done = subprocess.run([*cmd, "--public-key", str(a.pub)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "signatures checked" in done.stdout

    # Auditors' traffic is not MCP traffic: nothing under recordings/ came from /audit.
    for key in a.gw.store.list_sessions():
        if not key.startswith("audit-"):
            starts = [e for e in a.gw.session(key).events if e["type"] == "exchange.start"]
            assert all(not e["path"].startswith("/audit") for e in starts)

    # Every access is on the trail: who, what, from where, result; refused ones too.
    def on_trail() -> bool:
        seen = {(e["principal"]["username"] if e["principal"] else None, e["action"], e["target"], e["result"])
                for e in _trail(a)}  # fmt: skip
        return {
            ("dave", "show", bob_alpha, "not_found"),
            ("alice", "show", bob_alpha, "ok"),
            ("carol", "export", carol_beta, "ok"),
            ("alice", "list", "", "ok"),
            ("alice", "verify", bob_alpha, "ok"),
        } <= seen

    wait_until(on_trail, 20, "the accesses on the audit trail", interval=0.3)
    sample = next(e for e in _trail(a) if e["action"] == "show")
    assert sample["client"].endswith("via 127.0.0.1") and sample["time"] > 0 and sample["status"] in (200, 404)
    # The trail is for the trail's viewers only.
    assert a.keys("alice", "team-a", server="audit") == []
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert a.get("alice", f"/api/sessions/audit-{day}", "team-a").status_code == 404

    # The trail verifies with the CLI; a changed byte fails it.
    rec = a.gw.config["recording"]["directory"]
    verify_cmd = [sys.executable, "-m", "extproc", "sessions", "verify", f"audit-{day}", "--dir", rec]
    verify_cmd += ["--public-key", str(a.pub), "--allow-open"]
    done = subprocess.run(verify_cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    _change_one_byte(Path(rec, f"audit-{day}"))
    done = subprocess.run(verify_cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "FAIL" in done.stdout, done.stdout


def _change_one_byte(folder: Path) -> None:
    trail_file = next(folder.glob("*.jsonl"))
    data = bytearray(trail_file.read_bytes())
    at = data.index(b'"action":"show"') + len(b'"action":"')
    data[at] = ord("S")
    trail_file.write_bytes(bytes(data))


async def test_bad_input_and_bad_tokens_are_refused_clearly(audit: Audit) -> None:
    a = audit
    key = await _record(a, "carol", "alpha")
    wait_until(lambda: key in a.keys("carol"), 20, "the session to be indexed", interval=0.2)
    for params, words in [
        ({"state": "bogus"}, "state"),
        ({"cursor": "!!!"}, "cursor"),
        ({"cursor": "WzEsMl0"}, "cursor"),  # base64 of [1,2]: well-formed, not ours
        ({"limit": "0"}, "limit"),
        ({"since": "yesterday"}, "since"),
        ({"until": "-5"}, "from 1970"),  # no zone is UTC, as for the CLI's --since (one parser)
        ({"colour": "red"}, "colour"),
    ]:
        r = a.get("carol", "/api/sessions", **params)
        assert r.status_code == 400 and words in r.json()["error"]["message"], (params, r.text)
    for same in ({"since": "24h"}, {"since": "2020-01-01T00:00:00"}, {"since": "2020-01-01T00:00Z"}):
        r = a.get("carol", "/api/sessions", **same)
        assert r.status_code == 200 and key in [s["session"] for s in r.json()["sessions"]], (same, r.text)
    for trick in ("..", "%2e%2e", "a%20b", "..%2F..%2Fetc", "x%00y", "%2F"):
        r = a.get("carol", f"/api/sessions/{trick}")
        assert r.status_code in (400, 404), (trick, r.status_code)
        if "%2F" not in trick and "%00" not in trick:  # Envoy refuses escaped slashes and NUL itself (400)
            assert r.headers["content-type"].startswith("application/json")
    r = a.get("carol", f"/api/sessions/{key}/replay", speed="fast")
    assert r.status_code == 400

    # Expired and foreign tokens: 401 with exactly the challenge the gateway gives MCP clients.
    expired = a.token("carol", ttl=-600)
    foreign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign = a.issuer.mint("carol", aud=a.gw.endpoint, key=foreign_key)
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    for token in (expired, foreign, None):
        headers = {"authorization": f"Bearer {token}"} if token else {}
        r = httpx.get(f"{a.base}/api/sessions", headers=headers, timeout=10)
        mcp = httpx.post(
            a.gw.url("alpha"), json=init, headers={**headers, "accept": "application/json, text/event-stream"}
        )
        assert r.status_code == mcp.status_code == 401
        assert r.headers["www-authenticate"] == mcp.headers["www-authenticate"]
        assert r.json()["error"]["message"]

    # The sessions commands work through the API, as a remote auditor would (token from the environment).
    env = {**os.environ, "MCP_EXTPROC_TOKEN": a.token("carol")}
    cli = [sys.executable, "-m", "extproc", "sessions"]
    done = subprocess.run([*cli, "list", "--api", a.base, "--json"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and [r["session"] for r in json.loads(done.stdout)] == [key], done.stderr
    done = subprocess.run([*cli, "verify", key, "--api", a.base], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "signatures checked" in done.stdout, done.stdout + done.stderr
    done = subprocess.run([*cli, "show", key, "--api", a.base], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and "tools/call" in done.stdout, done.stdout + done.stderr
    env["MCP_EXTPROC_TOKEN"] = a.token("dave")
    done = subprocess.run([*cli, "show", key, "--api", a.base], capture_output=True, text=True, env=env)
    assert done.returncode == 1 and "404: no such session" in done.stdout

    # The index is rebuilt from the store at any time, beside the running service.
    config = str(a.gw.stack.config)
    done = subprocess.run([sys.executable, "-m", "extproc", "audit", "reindex", "--config", config],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and "indexed" in done.stdout, done.stdout + done.stderr
    assert a.keys("carol") == [key]

    # State-changing requests need the CSRF token.
    r = httpx.post(f"{a.base}/logout", timeout=10, follow_redirects=False)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]["message"]

    # The OpenAPI document is served and names every API route.
    doc = httpx.get(f"{a.base}/api/openapi.json", timeout=10).json()
    assert "/audit/api/sessions/{key}/replay" in doc["paths"]


async def _paced_session(a: Audit) -> str:
    async with connect(a.gw.url("alpha"), a.token("carol"), mode="legacy") as conn:
        await conn.client.call_tool("echo", {"text": "one"})
        await asyncio.sleep(0.4)
        await conn.client.call_tool("echo", {"text": "two"})
        await asyncio.sleep(0.4)
        await conn.client.call_tool("echo", {"text": "three"})
        assert conn.session_id
        return recording_key(conn.session_id, "alpha")


def _replay(a: Audit, key: str, **params: Any) -> list[tuple[float, float]]:
    """(arrival time, recorded offset) of every replayed event."""
    out: list[tuple[float, float]] = []
    headers = {"authorization": f"Bearer {a.token('carol')}"}
    with httpx.stream("GET", f"{a.base}/api/sessions/{key}/replay", params=params, headers=headers, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: {}":
                out.append((time.monotonic(), json.loads(line[6:])["offset"]))
    return out


@pytest.mark.parametrize("speed", [1, 4])
async def test_replay_keeps_the_recorded_pace(audit: Audit, speed: int) -> None:
    a = audit
    key = await _paced_session(a)
    wait_until(lambda: key in a.keys("carol"), 20, "the session to be indexed", interval=0.2)
    got = _replay(a, key, speed=speed)
    recorded = got[-1][1] - got[0][1]
    played = got[-1][0] - got[0][0]
    assert recorded > 0.7
    slack = 0.03  # the event loop's own scheduling on a shared two-core box; the pace itself must hold to 10 %
    assert abs(played - recorded / speed) <= 0.1 * recorded / speed + slack, (played, recorded)
    # Each gap, too (the 0.4 s pauses), within 10% (plus scheduling slack of a few ms).
    for (t0, o0), (t1, o1) in itertools.pairwise(got):
        if o1 - o0 > 0.3:
            assert abs((t1 - t0) - (o1 - o0) / speed) <= 0.1 * (o1 - o0) / speed + slack
    later = _replay(a, key, speed=16, start=0.5)
    assert later and all(o >= 0.5 for _, o in later)


async def test_remote_sessions_commands_print_tables_and_agree_with_local_ones(audit: Audit) -> None:
    """`sessions list --api` prints its table (it crashed on the API's boolean `verified`); local and remote JSON
    say `verified` the same way; remote `show` and `verify` agree that signatures were checked."""
    a = audit
    key = await _record(a, "carol", "alpha")
    _wait_listed(a, {key})
    env = {**os.environ, "MCP_EXTPROC_TOKEN": a.token("carol"), "COLUMNS": "200"}
    cli = [sys.executable, "-m", "extproc", "sessions"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([*cli, *args], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    table = run("list", "--api", a.base).stdout
    row = next(line for line in table.splitlines() if key in line)
    assert row.split()[-1] == "yes", table  # chains intact and signatures checked by the service
    remote = json.loads(run("list", "--api", a.base, "--json").stdout)
    directory = a.gw.config["recording"]["directory"]
    local = json.loads(run("list", "--dir", directory, "--public-key", str(a.pub), "--json").stdout)
    assert [(r["verified"], r["signatures_checked"]) for r in remote] == [(True, True)]
    assert [(r["verified"], r["signatures_checked"]) for r in local if r["session"] == key] == [(True, True)]
    shown = run("show", key, "--api", a.base).stdout
    assert "signatures and chains verified" in shown and "not checked" not in shown, shown
    assert "signatures checked" in run("verify", key, "--api", a.base).stdout
