"""Just-in-time grants through real Envoy: a grant opens access on its own and closes it when it expires or is
revoked (no reload); a hand-made grant opens nothing; each use is recorded with the grant's id and reason."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from cryptography.hazmat.primitives import serialization
from gateway_parts import open_session

from extproc.launcher import wait_until
from extproc.policy.grant_files import LOG_NAME, create, revoke
from extproc.recording.manifest import generate_keys

BASICS_ONLY = """
apiVersion: mcp-extproc/v1
rules:
  - name: alice-everything
    effect: allow
    subjects: {users: [alice]}
    targets: {servers: ["*"], methods: ["*"]}
"""


def _echo(url: str, headers: dict) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"text": "x"}}}
    return httpx.post(url, json=body, headers=headers, timeout=10)


def test_grant_opens_and_closes_access_on_its_own(start_mcp_server, start_authed, issuer, tmp_path: Path) -> None:
    key_path, _ = generate_keys(tmp_path / "keys")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    directory = tmp_path / "grants"
    directory.mkdir()
    server = start_mcp_server("prod")
    gw = start_authed(
        [server],
        policy=BASICS_ONLY,
        gateway={"recording": {"signing_key": str(key_path)}, "grants": {"directory": str(directory)}},
    )
    url = gw.url("prod")
    bob = issuer.mint("bob", aud=gw.endpoint, groups=("eng",))
    init = {"authorization": f"Bearer {bob}", "accept": "application/json, text/event-stream"}
    assert (
        httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=init, timeout=10).status_code == 403
    )

    # A file dropped in by hand (same shape, no valid signature) opens nothing.
    forged = {"v": 1, "id": "g-00000000000000ff", "user": "bob", "server": "prod", "tools": ["*"], "not_before": 0,
              "until": time.time() + 3600, "reason": "trust me", "approved_by": "alice", "sig": ""}  # fmt: skip
    (directory / "g-00000000000000ff.json").write_text(json.dumps(forged))
    assert (
        httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers=init, timeout=10).status_code == 403
    )

    g, _ = create(directory, key, user="bob", server="prod", tools=["echo"], seconds=4, reason="INC-123",
                         approved_by="alice", now=time.time())  # fmt: skip
    headers = open_session(url, bob)  # the grant covers what a session needs
    assert _echo(url, headers).status_code == 200
    wait_until(lambda: _echo(url, headers).status_code == 403, 8, "grant expiry closes the open session's calls")
    assert time.time() >= g.until

    g2, _ = create(directory, key, user="bob", server="prod", tools=["echo"], seconds=3600, reason="INC-124",
                          approved_by="alice", now=time.time())  # fmt: skip
    assert _echo(url, headers).status_code == 200
    revoke(directory, key, g2.id, "alice", "done", time.time())
    assert _echo(url, headers).status_code == 403  # at once: the very next call
    gw.stop()

    decisions = [
        json.loads(line)
        for p in gw.store.root.rglob("*.jsonl")
        for line in p.read_text().splitlines()
        if '"policy.decision"' in line
    ]
    used = {(d["grant"]["id"], d["grant"]["reason"]) for d in decisions if d.get("grant")}
    assert used == {(g.id, "INC-123"), (g2.id, "INC-124")}
    assert all(d["rule"] == f"grant:{d['grant']['id']}" for d in decisions if d.get("grant"))


def test_deleting_or_editing_files_never_widens_access(start_mcp_server, start_authed, issuer, tmp_path: Path) -> None:
    """Someone who can write the grants directory but lacks the key: deleting or editing the revocation log keeps
    the grant revoked, and an in-place edit of a grant file (the directory's mtime does not move) is noticed."""
    key_path, _ = generate_keys(tmp_path / "keys")
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    directory = tmp_path / "grants"
    server = start_mcp_server("prod")
    gw = start_authed(
        [server],
        policy=BASICS_ONLY,
        gateway={"recording": {"signing_key": str(key_path)}, "grants": {"directory": str(directory)}},
    )
    url = gw.url("prod")
    bob = issuer.mint("bob", aud=gw.endpoint, groups=("eng",))
    g, _ = create(directory, key, user="bob", server="prod", tools=["echo"], seconds=3600, reason="INC-1",
                         approved_by="alice", now=time.time())  # fmt: skip
    headers = open_session(url, bob)
    assert _echo(url, headers).status_code == 200
    revoke(directory, key, g.id, "alice", "done", time.time())
    refused = _echo(url, headers)
    assert refused.status_code == 403 and refused.headers.get("x-request-id")  # a refusal names its request
    log_path = directory / LOG_NAME
    signed = log_path.read_text()
    log_path.write_text(signed.replace('"seq": 1', '"seq": 2'))  # edited: the signature no longer matches
    assert _echo(url, headers).status_code == 403
    log_path.unlink()  # deleted
    assert _echo(url, headers).status_code == 403
    log_path.write_text(signed)  # the genuine log back: still revoked

    _, path = create(directory, key, user="bob", server="prod", tools=["echo"], seconds=3600, reason="INC-2",
                            approved_by="alice", now=time.time())  # fmt: skip
    assert _echo(url, headers).status_code == 200
    mtime = directory.stat().st_mtime_ns
    with path.open("r+") as f:  # in place: same inode, the directory is not touched
        doc = json.loads(f.read())
        f.seek(0)
        f.write(json.dumps({**doc, "tools": ["*"]}))
        f.truncate()
    assert directory.stat().st_mtime_ns == mtime
    assert _echo(url, headers).status_code == 403  # the edited grant no longer verifies: refused at once
    gw.stop()
