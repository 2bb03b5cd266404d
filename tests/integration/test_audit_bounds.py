"""The audit service under hostile callers, through real Envoy: login floods stay bounded, bad input is a 400 on the
trail, every API answer carries nosniff and a CSP."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from gateway_parts import Gateway

from extproc.audit.web import LOGIN_COOKIE, MAX_NEXT, MAX_PENDING_LOGINS, SESSION_COOKIE
from extproc.launcher import free_port
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
  - name: security-reads-the-trail
    subjects: {groups: [security]}
    servers: [audit]
    sessions: all
"""


@pytest.fixture
def gw(start_mcp_server, start_authed, tmp_path: Path) -> Gateway:
    key, _ = generate_keys(tmp_path / "keys")
    gateway = {
        "recording": {"signing_key": str(key), "segment_max_age_ms": 100, "flush_interval_ms": 20},
        "audit": {"port": free_port(), "index_interval_ms": 100, "client_id": "audit-viewer"},
    }
    return start_authed([start_mcp_server("alpha")], policy=POLICY, gateway=gateway)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _start_login(http: httpx.Client, base: str, next_path: str | None = None) -> httpx.Response:
    return http.get(f"{base}/login", params={"next": next_path} if next_path is not None else {})


def _finish_login(http: httpx.Client, started: httpx.Response, username: str, groups: str) -> httpx.Response:
    """The browser's part: sign in at the dev issuer, follow its redirect to the callback with the login cookie."""
    assert started.status_code == 302, started.text
    params = dict(parse_qsl(urlsplit(started.headers["location"]).query))
    form = {**params, "username": username, "groups": groups}
    issuer_url = started.headers["location"].split("?", 1)[0]
    back = httpx.post(issuer_url, data=form, timeout=10)
    assert back.status_code == 302, back.text
    return http.get(back.headers["location"], cookies={LOGIN_COOKIE: params["state"]})


def test_a_login_flood_stays_bounded_and_a_real_login_still_completes(gw: Gateway) -> None:
    base = f"{gw.endpoint}/audit"
    assert gw.stack.audit is not None
    pid = gw.stack.audit.pid
    with httpx.Client(timeout=30) as http:
        # Over-long or foreign `next`: a clear 400, nothing held.
        for bad in ("/audit/" + "a" * 40_000, "/audit/" + "a" * MAX_NEXT, "https://evil.example/", "//evil", ""):
            r = _start_login(http, base, bad)
            assert r.status_code == 400 and "next" in r.json()["error"]["message"], (bad[:30], r.text[:200])
            assert LOGIN_COOKIE not in r.cookies

        first = _start_login(http, base, "/audit/?user=bob")  # started, never finished: must be evicted
        rss_before = _rss_kb(pid)
        longest = "/audit/?q=" + "x" * (MAX_NEXT - len("/audit/?q="))
        for _ in range(MAX_PENDING_LOGINS + 200):
            assert _start_login(http, base, longest).status_code == 302
        rss_after = _rss_kb(pid)
        print(f"\naudit service RSS {rss_before} kB -> {rss_after} kB after {MAX_PENDING_LOGINS + 200} logins")

        # The flood pushed the first login out (the oldest goes first): the count is bounded.
        evicted = _finish_login(http, first, "alice", "team-a")
        assert evicted.status_code == 400 and "start again" in evicted.json()["error"]["message"]
        assert SESSION_COOKIE not in evicted.cookies

        # A real login after the flood completes, lands on its `next`, and works.
        done = _finish_login(http, _start_login(http, base, "/audit/?state=open"), "alice", "team-a")
        assert done.status_code == 303 and done.headers["location"] == "/audit/?state=open", done.text
        me = http.get(f"{base}/api/me", cookies={SESSION_COOKIE: done.cookies[SESSION_COOKIE]})
        assert me.status_code == 200 and me.json()["username"] == "alice"
        # A non-ASCII state or CSRF token is refused like any wrong one (it was a 500).
        r = http.get(f"{base}/callback", params={"state": "²", "code": "x"}, cookies={LOGIN_COOKIE: "a"})
        assert r.status_code == 400
        r = http.post(
            f"{base}/logout",
            headers={"x-csrf-token": "\u00b2".encode()},
            cookies={SESSION_COOKIE: done.cookies[SESSION_COOKIE]},
        )
        assert r.status_code == 403
