"""The audit service under hostile callers, through real Envoy: login floods stay bounded, bad input is a 400 on the
trail, every API answer carries nosniff and a CSP."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
import yaml
import zygote
from gateway_parts import ForkedStack, recording_key

from extproc.audit.web import LOGIN_COOKIE, MAX_NEXT, SESSION_COOKIE
from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import run_session
from extproc.launcher import Stack, free_port, http_ok, wait_until
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


class Service:
    """One gateway with the audit service (web login on), shared by this module's tests, and one recorded session."""

    def __init__(self, stack: Stack, issuer: DevIssuer) -> None:
        self.stack, self.issuer = stack, issuer
        self.endpoint = stack.endpoint
        self.base = f"{stack.endpoint}/audit"
        self.key = ""

    def token(self, who: str, *groups: str) -> str:
        return self.issuer.mint(who, aud=self.endpoint, groups=list(groups))

    def get(self, path: str, who: str = "alice", *groups: str, **kw: Any) -> httpx.Response:
        headers = {"authorization": f"Bearer {self.token(who, *groups or ('team-a',))}"}
        return httpx.get(f"{self.base}{path}", headers=headers, timeout=30, **kw)

    def trail(self) -> list[dict[str, Any]]:
        """The audit.access events of today's trail, as the security group reads them through the API."""
        key = "audit-" + time.strftime("%Y-%m-%d", time.gmtime())
        r = self.get(f"/api/sessions/{key}/events", "sec", "security")
        if r.status_code != 200:
            return []
        return [e for e in map(json.loads, r.text.splitlines()) if e["type"] == "audit.access"]


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    work = tmp_path_factory.mktemp("audit-bounds")
    port = free_port()
    mcp = zygote.spawn("extproc.demo.mcp_server", ["--port", str(port), "--name", "alpha"], work / "mcp.log")
    stack: Stack | None = None
    try:
        with DevIssuer(work / "issuer") as issuer:
            wait_until(lambda: http_ok(f"http://127.0.0.1:{port}/_seen"), 20, "the MCP server")
            key, _ = generate_keys(work / "keys")
            (work / "policies").mkdir()
            (work / "policies" / "policy.yaml").write_text(POLICY)
            listen = free_port()
            config = {
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
                "audit": {"port": free_port(), "index_interval_ms": 100, "client_id": "audit-viewer"},
            }  # fmt: skip
            (work / "gateway.yaml").write_text(yaml.safe_dump(config))
            stack = ForkedStack(config=work / "gateway.yaml", workdir=work).start(log=work / "gateway.log")
            service = Service(stack, issuer)
            result = asyncio.run(run_session(stack.url("alpha"), service.token("bob"), progress=False, mode="legacy"))
            service.key = recording_key(result.session_id, "alpha")

            def listed() -> bool:
                r = service.get("/api/sessions")
                return r.status_code == 200 and service.key in {s["session"] for s in r.json()["sessions"]}

            wait_until(listed, 30, "the recorded session in the index", interval=0.2)
            yield service
    finally:
        if stack is not None:
            stack.stop()
        mcp.terminate()
        mcp.wait(10)


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _cookie(name: str, value: str) -> dict[str, str]:
    """One cookie sent with one request (httpx deprecates per-request cookie jars)."""
    return {"cookie": f"{name}={value}"}


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
    return http.get(back.headers["location"], headers=_cookie(LOGIN_COOKIE, started.cookies[LOGIN_COOKIE]))


def test_a_login_flood_stays_bounded_and_a_real_login_still_completes(svc: Service) -> None:
    base = svc.base
    assert svc.stack.audit is not None
    pid = svc.stack.audit.pid
    with httpx.Client(timeout=30) as http:
        # Over-long or foreign `next`: a clear 400, nothing held.
        for bad in ("/audit/" + "a" * 40_000, "/audit/" + "a" * MAX_NEXT, "https://evil.example/", "//evil", ""):
            r = _start_login(http, base, bad)
            assert r.status_code == 400 and "next" in r.json()["error"]["message"], (bad[:30], r.text[:200])
            assert LOGIN_COOKIE not in r.cookies

        first = _start_login(http, base, "/audit/?user=bob")
        rss_before = _rss_kb(pid)
        longest = "/audit/?q=" + "x" * (MAX_NEXT - len("/audit/?q="))
        flood = 1224
        for _ in range(flood):
            assert _start_login(http, base, longest).status_code == 302
        rss_after = _rss_kb(pid)
        print(f"\naudit service RSS {rss_before} kB -> {rss_after} kB after {flood} logins")
        assert rss_after - rss_before < 4096  # a started login is sealed into its cookie: nothing held per caller

        # So the flood pushed nothing out: the first login still completes.
        assert _finish_login(http, first, "alice", "team-a").status_code == 303
        # A started login's cookie from another browser (another state) is refused.
        other = _start_login(http, base, "/audit/")
        params = dict(parse_qsl(urlsplit(other.headers["location"]).query))
        r = http.get(f"{base}/callback", params={"state": params["state"], "code": "x"},
                     headers=_cookie(LOGIN_COOKIE, first.cookies[LOGIN_COOKIE]))  # fmt: skip
        assert r.status_code == 400 and "start again" in r.json()["error"]["message"]

        # A real login after the flood completes, lands on its `next`, and works.
        done = _finish_login(http, _start_login(http, base, "/audit/?state=open"), "alice", "team-a")
        assert done.status_code == 303 and done.headers["location"] == "/audit/?state=open", done.text
        me = http.get(f"{base}/api/me", headers=_cookie(SESSION_COOKIE, done.cookies[SESSION_COOKIE]))
        assert me.status_code == 200 and me.json()["username"] == "alice"
        # A non-ASCII state or CSRF token is refused like any wrong one (it was a 500).
        r = http.get(f"{base}/callback", params={"state": "²", "code": "x"}, headers=_cookie(LOGIN_COOKIE, "a"))
        assert r.status_code == 400
        r = http.post(
            f"{base}/logout",
            headers={"x-csrf-token": "\u00b2".encode(), **_cookie(SESSION_COOKIE, done.cookies[SESSION_COOKIE])},
        )
        assert r.status_code == 403


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


LIST = "/api/sessions"
SESSION = "/api/sessions/{key}"
BAD_QUERIES = [
    # (path, params, status, words in the message)
    pytest.param(LIST, {"limit": "²"}, 400, "limit", id="limit-superscript-digit"),
    pytest.param(LIST, {"limit": "٣"}, 400, "limit", id="limit-arabic-indic-digit"),
    pytest.param(LIST, {"limit": "0"}, 400, "limit", id="limit-zero"),
    pytest.param(LIST, {"limit": "501"}, 400, "limit", id="limit-too-big"),
    pytest.param(LIST, {"limit": "9" * 5000}, 400, "limit", id="limit-huge"),
    pytest.param(LIST, {"limit": "-1"}, 400, "limit", id="limit-negative"),
    pytest.param(LIST, {"limit": ""}, 400, "limit", id="limit-empty"),
    pytest.param(LIST, {"cursor": "[" * 5000}, 400, "cursor", id="cursor-brackets"),
    pytest.param(LIST, {"cursor": _b64("[" * 5000)}, 400, "cursor", id="cursor-nested-json"),
    pytest.param(LIST, {"cursor": _b64("[" * 300)}, 400, "cursor", id="cursor-short-nested-json"),
    pytest.param(LIST, {"cursor": "!!!"}, 400, "cursor", id="cursor-not-base64"),
    pytest.param(LIST, {"cursor": ""}, 400, "cursor", id="cursor-empty"),
    pytest.param(LIST, {"cursor": _b64('[1e999, "k"]')}, 400, "cursor", id="cursor-infinite-time"),
    pytest.param(LIST, {"since": "yesterday"}, 400, "since", id="since-words"),
    pytest.param(LIST, {"since": "nan"}, 400, "since", id="since-nan"),
    pytest.param(LIST, {"since": "1e999"}, 400, "since", id="since-infinite"),
    pytest.param(LIST, {"since": "-5"}, 400, "since", id="since-negative"),
    pytest.param(LIST, {"until": "99999999999999"}, 400, "until", id="until-after-9999"),
    pytest.param(LIST, {"until": "9" * 5000}, 400, "until", id="until-huge"),
    pytest.param(LIST, {"until": "²"}, 400, "until", id="until-superscript"),
    pytest.param(LIST, {"state": "bogus"}, 400, "state", id="state-unknown"),
    pytest.param(LIST, {"tool": ""}, 400, "tool", id="tool-empty"),
    pytest.param(LIST, {"tool": "t" * 201}, 400, "tool", id="tool-too-long"),
    pytest.param(LIST, {"server": "s" * 201}, 400, "server", id="server-too-long"),
    pytest.param(LIST, {"user": ""}, 400, "user", id="user-empty"),
    pytest.param(LIST, {"x" * 3000: "1"}, 400, "unknown parameter", id="unknown-long-name"),
    pytest.param(SESSION, {"limit": "1"}, 400, "unknown parameter", id="show-takes-no-parameters"),
    pytest.param(SESSION + "/events", {"cursor": "x"}, 400, "unknown parameter", id="events-param"),
    pytest.param(SESSION + "/verify", {"since": "1"}, 400, "unknown parameter", id="verify-param"),
    pytest.param(SESSION + "/export", {"tool": "x"}, 400, "unknown parameter", id="export-param"),
    pytest.param(SESSION + "/replay", {"speed": "fast"}, 400, "speed", id="replay-speed-words"),
    pytest.param(SESSION + "/replay", {"speed": "0"}, 400, "speed", id="replay-speed-zero"),
    pytest.param(SESSION + "/replay", {"speed": "nan"}, 400, "speed", id="replay-speed-nan"),
    pytest.param(SESSION + "/replay", {"start": "-1"}, 400, "start", id="replay-start-negative"),
    pytest.param(SESSION + "/replay", {"start": "1e999"}, 400, "start", id="replay-start-infinite"),
    pytest.param("/api/sessions/no-such-session", {}, 404, "no such session", id="show-unknown"),
    pytest.param("/api/sessions/a..b", {}, 400, "session", id="show-bad-key"),
    pytest.param("/api/me", {"x": "1"}, 400, "unknown parameter", id="me-param"),
    pytest.param("/api/nope", {}, 404, "no such path", id="unknown-route"),
    pytest.param(SESSION + "/nope", {}, 404, "no such path", id="unknown-session-route"),
]


@pytest.mark.parametrize("path, params, status, words", BAD_QUERIES)
def test_bad_input_is_a_json_error_on_the_trail(
    svc: Service, path: str, params: dict[str, str], status: int, words: str, request: pytest.FixtureRequest
) -> None:
    who = f"case-{request.node.callspec.id}"[:60]
    r = svc.get(path.format(key=svc.key), who, "team-a", params=params)
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"] == "application/json"
    assert words in r.json()["error"]["message"]
    assert len(r.content) < 2000  # a refusal does not echo what it refuses

    def on_trail() -> bool:
        return any((e["principal"] or {}).get("username") == who for e in svc.trail())

    wait_until(on_trail, 20, "the refusal on the audit trail", interval=0.2)
    (event,) = [e for e in svc.trail() if (e["principal"] or {}).get("username") == who]
    assert event["status"] == status
    assert event["result"] == ("not_found" if status == 404 else "bad_request")


ROUTES = [
    pytest.param("/api/me", id="me"),
    pytest.param("/api/sessions", id="list"),
    pytest.param("/api/sessions/{key}", id="show"),
    pytest.param("/api/sessions/{key}/events", id="events"),
    pytest.param("/api/sessions/{key}/verify", id="verify"),
    pytest.param("/api/sessions/{key}/export", id="export"),
    pytest.param("/api/sessions/{key}/replay?speed=100", id="replay"),
    pytest.param("/api/openapi.json", id="openapi"),
    pytest.param("/api/sessions?limit=0", id="error-400"),
    pytest.param("/api/sessions/nothing-here", id="error-404"),
    pytest.param("/api/nope", id="no-such-route"),
    pytest.param("/login?next=//evil", id="login-refused"),
    pytest.param("/login", id="login-redirect"),
    pytest.param("/callback", id="callback-refused"),
    pytest.param("/static/app.js", id="static"),
]


@pytest.mark.parametrize("path", ROUTES)
def test_every_answer_that_is_not_the_page_says_nosniff_and_denies_everything(svc: Service, path: str) -> None:
    r = svc.get(path.format(key=svc.key), follow_redirects=False)
    assert r.status_code < 500, r.text[:300]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"


def test_the_page_keeps_its_own_policy(svc: Service) -> None:
    r = httpx.get(f"{svc.base}/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"].startswith("default-src 'self'")


def test_the_bundle_verify_page_is_served_and_may_call_nothing(svc: Service) -> None:
    r = httpx.get(f"{svc.base}/static/verify.html", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "connect-src 'none'" in r.text and 'src="verify.js"' in r.text  # the page's own policy: no request
