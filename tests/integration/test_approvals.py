"""Approvals through real Envoy: the mcp SDK client as the caller, the dev issuer's tokens, the audit service, and
`mcp-extproc approvals` as the approver. A held call passes exactly once after a person approves it."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import zygote
from gateway_parts import Gateway

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect
from extproc.launcher import free_port, wait_until
from extproc.recording.manifest import generate_keys

POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: everyone
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, server/discover, ping, "notifications/*", tools/list, http/get,
                                        http/delete]}
  - name: echo-for-all
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo, add]}
  - name: adding-needs-sre
    effect: approve
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [add]}
    approvers: {groups: [sre]}
    ttl: 10m
  - name: echo-needs-sre-briefly
    effect: approve
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
    arguments: {text: {values: [brief]}}
    approvers: {groups: [sre]}
    ttl: 3s
viewers:
  - name: sre-sees-demo
    subjects: {groups: [sre]}
    servers: [demo]
    sessions: all
  - name: everyone-sees-own
    subjects: {users: ["*"]}
    servers: [demo]
    sessions: own
"""
ID = re.compile(r"ap-[0-9a-f]{20}")


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A receiver on loopback for the approvals webhook: its URL and the JSON bodies it got."""
    got: list[dict] = []

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def approval_gateway(
    start_authed, start_mcp_server, tmp_path: Path, policy: str = POLICY, webhook_url: str | None = None
) -> Gateway:
    key, _ = generate_keys(tmp_path / "keys")
    gateway = {
        "recording": {"signing_key": str(key)},
        "audit": {"port": free_port(), "index_interval_ms": 200},
        "approvals": {
            "directory": str(tmp_path / "approvals"),
            **({"webhook_url": webhook_url} if webhook_url else {}),
        },
    }
    return start_authed([start_mcp_server("demo")], policy=policy, gateway=gateway)


async def call(gw: Gateway, token: str, tool: str, args: dict) -> tuple[bool, str]:
    """(passed, result text or the JSON-RPC error's message) of one tools/call through the gateway."""
    async with connect(gw.url(), token=token) as conn:
        try:
            result = await conn.client.call_tool(tool, args)
        except Exception as e:  # the SDK raises its MCPError carrying the JSON-RPC error
            return False, str(e)
        return True, json.dumps(result.structured_content)


def cli(gw: Gateway, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "extproc", "approvals", *args, "--api", f"{gw.endpoint}/audit/", "--token", token]
    return zygote.run_command(cmd, timeout=60)


def events(gw: Gateway) -> list[dict]:
    return [json.loads(x) for p in gw.store.root.rglob("*.jsonl") for x in p.read_bytes().splitlines()]


async def test_held_call_passes_once_after_an_approver_approves_it(
    start_authed, start_mcp_server, issuer: DevIssuer, tmp_path: Path, webhook: tuple[str, list[dict]]
) -> None:
    gw = approval_gateway(start_authed, start_mcp_server, tmp_path, webhook_url=webhook[0])
    alice = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    bob = issuer.mint("bob", aud=gw.endpoint, groups=["sre"])
    carol = issuer.mint("carol", aud=gw.endpoint, groups=["eng"])
    dave = issuer.mint("dave", aud=gw.endpoint, groups=["eng"])
    selfish = issuer.mint("alice", aud=gw.endpoint, groups=["sre"])  # alice in sre still may not approve herself

    passed, held = await call(gw, alice, "add", {"a": 1, "b": 2})
    assert not passed and "approval required" in held and f"{gw.endpoint}/audit/approvals/ap-" in held
    aid = ID.search(held)[0]  # type: ignore[index]
    passed, again = await call(gw, alice, "add", {"a": 1, "b": 2})
    assert not passed and f"approval {aid} is still pending" in again  # the same request, not a second one
    await asyncio.to_thread(wait_until, lambda: bool(webhook[1]), 10, "the webhook notice", 0.05)
    [notice] = webhook[1]  # one per new request, none for the pending retry
    assert notice["type"] == "approval.requested" and notice["approval_id"] == aid and notice["tool"] == "add"
    assert notice["caller"]["username"] == "alice" and notice["url"].endswith(f"/audit/approvals/{aid}")
    assert "arguments" not in notice

    listed = cli(gw, bob, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["tool"], r["caller"]["username"], r["may_decide"]) for r in rows] == [
        (aid, "add", "alice", True)
    ]
    assert json.loads(rows[0]["arguments"]) == {"a": 1, "b": 2} and rows[0]["capture"] == "redacted"
    request = json.loads((tmp_path / "approvals" / f"{aid}.request.json").read_text())
    assert request["v"] == 2 and request["sealed"] is None  # the shared signed-file scheme; no encrypt_payloads

    own = cli(gw, selfish, "approve", aid)
    assert own.returncode == 1 and "403" in own.stderr and "their own call" in own.stderr
    other = cli(gw, carol, "approve", aid)  # not in sre; not her session either: not even shown
    assert other.returncode == 1 and "404" in other.stderr
    ok = cli(gw, bob, "approve", aid, "--reason", "one addition is fine")
    assert ok.returncode == 0 and f"{aid}: approved by bob" in ok.stdout, ok.stderr

    passed, changed = await call(gw, alice, "add", {"a": 1, "b": 3})  # other arguments
    assert not passed and "approval required" in changed and aid not in changed
    passed, stranger = await call(gw, dave, "add", {"a": 1, "b": 2})  # another caller, the same arguments
    assert not passed and "approval required" in stranger and aid not in stranger
    assert await call(gw, alice, "add", {"a": 1, "b": 2}) == (True, json.dumps({"result": 3}))
    passed, used = await call(gw, alice, "add", {"a": 1, "b": 2})
    assert not passed and f"approval {aid} was already used" in used

    twice = cli(gw, bob, "approve", aid)
    assert twice.returncode == 1 and "409" in twice.stderr
    new_id = ID.search(used)[0]  # type: ignore[index]
    denied = cli(gw, bob, "deny", new_id, "--reason", "once is enough")
    assert denied.returncode == 0 and f"{new_id}: denied by bob" in denied.stdout
    passed, after_denial = await call(gw, alice, "add", {"a": 1, "b": 2})
    assert not passed and "denied by bob: once is enough" in after_denial

    gw.stop()
    decisions = [e for e in events(gw) if e["type"] == "policy.decision" and e.get("approval")]
    states = [(e["approval"]["id"] == aid, e["approval"]["state"], e["allowed"]) for e in decisions]
    assert (True, "pending", False) in states and (True, "consumed", True) in states
    consumed = next(e for e in decisions if e["approval"]["state"] == "consumed")
    assert consumed["approval"]["by"] == "bob" and consumed["rule"] == "adding-needs-sre"
    trail = [e for e in events(gw) if e.get("server") == "audit" or "action" in e]
    actions = json.dumps(trail)
    assert '"approve"' in actions and '"deny"' in actions and "once is enough" in actions


async def test_expired_approval_and_changed_policy_are_refused(
    start_authed, start_mcp_server, issuer: DevIssuer, tmp_path: Path
) -> None:
    gw = approval_gateway(start_authed, start_mcp_server, tmp_path)
    alice = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    bob = {"authorization": f"Bearer {issuer.mint('bob', aud=gw.endpoint, groups=['sre'])}"}
    api = f"{gw.endpoint}/audit/api/approvals"

    # expired: a 3 s approval, used after its expiry
    passed, held = await call(gw, alice, "echo", {"text": "brief"})
    aid = ID.search(held)[0]  # type: ignore[index]
    r = httpx.post(f"{api}/{aid}/approve", headers=bob, timeout=10)
    assert r.status_code == 200, r.text
    until = r.json()["decision"]["until"]
    await asyncio.to_thread(wait_until, lambda: time.time() > until + 0.05, 10, "the approval's expiry", 0.05)
    passed, late = await call(gw, alice, "echo", {"text": "brief"})
    assert not passed and f"approval {aid} expired" in late

    # a policy change: an approval given under the old version does not pass under the new one
    passed, held = await call(gw, alice, "add", {"a": 2, "b": 2})
    aid = ID.search(held)[0]  # type: ignore[index]
    assert httpx.post(f"{api}/{aid}/approve", headers=bob, timeout=10).status_code == 200
    passed, waiting = await call(gw, alice, "add", {"a": 7, "b": 7})  # held, still pending when the policy changes
    stale = ID.search(waiting)[0]  # type: ignore[index]
    policies = Path(gw.config["policy"]["directory"])
    changed_policy = POLICY.replace("tools: [echo, add]", "tools: [echo, add, whoami]")
    changed_policy += "  - {name: sre-new, subjects: {groups: [sre]}, servers: [demo], sessions: all}\n"
    (policies / "policy.yaml").write_text(changed_policy)

    async def reloaded() -> bool:
        return (await call(gw, alice, "whoami", {}))[0]

    deadline = time.monotonic() + 20
    while not await reloaded():
        assert time.monotonic() < deadline, "the processor did not load the changed policy"
        await asyncio.sleep(0.2)
    passed, changed = await call(gw, alice, "add", {"a": 2, "b": 2})
    assert not passed and "policy changed" in changed

    def audit_reloaded() -> bool:  # the audit service reloads the policy on its own schedule
        me = httpx.get(f"{gw.endpoint}/audit/api/me", headers=bob, timeout=10).json()
        return "sre-new" in me["viewer_rules"]

    await asyncio.to_thread(wait_until, audit_reloaded, 20, "the audit service on the changed policy", 0.2)
    r = httpx.post(f"{api}/{stale}/approve", headers=bob, timeout=10)
    assert r.status_code == 403 and "policy changed" in r.json()["error"]["message"]
    # and a request held under the old version cannot be approved under the new one
    passed, held = await call(gw, alice, "add", {"a": 5, "b": 5})
    fresh = ID.search(held)[0]  # type: ignore[index]
    assert httpx.post(f"{api}/{fresh}/approve", headers=bob, timeout=10).status_code == 200
    assert await call(gw, alice, "add", {"a": 5, "b": 5}) == (True, json.dumps({"result": 10}))


async def test_an_approve_rule_without_an_approvals_section_refuses(
    start_authed, start_mcp_server, issuer: DevIssuer, tmp_path: Path
) -> None:
    key, _ = generate_keys(tmp_path / "keys")
    gateway = {"recording": {"signing_key": str(key)}}  # an approve rule, but no approvals section
    gw = start_authed([start_mcp_server("demo")], policy=POLICY, gateway=gateway)
    alice = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    passed, refused = await call(gw, alice, "add", {"a": 1, "b": 2})
    assert not passed and "approvals unavailable" in refused


CHROMIUM = "/usr/bin/chromium"


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
async def test_approver_approves_in_the_web_viewer(
    start_authed, start_mcp_server, issuer: DevIssuer, tmp_path: Path
) -> None:
    async_api = pytest.importorskip("playwright.async_api")
    key, _ = generate_keys(tmp_path / "keys")
    gateway = {
        "recording": {"signing_key": str(key)},
        "audit": {"port": free_port(), "index_interval_ms": 200, "client_id": "audit-viewer"},
        "approvals": {"directory": str(tmp_path / "approvals")},
    }
    gw = start_authed([start_mcp_server("demo")], policy=POLICY, gateway=gateway)
    alice = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    passed, held = await call(gw, alice, "add", {"a": 20, "b": 22})
    aid = ID.search(held)[0]  # type: ignore[index]
    url = f"{gw.endpoint}/audit/approvals/{aid}"
    assert url in held

    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        try:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
            page.set_default_timeout(15_000)
            await page.goto(url)  # the link the caller got
            await page.click("#login")
            await page.fill("#username", "bob")
            await page.fill("#groups", "sre")
            await page.click("#sign-in")
            item = page.locator(f'li[data-approval="{aid}"]')
            await item.wait_for()
            assert "alice asks to call add on demo" in await item.inner_text()
            assert json.loads(await item.locator("pre.arguments").inner_text()) == {"a": 20, "b": 22}
            # the cookie alone does not decide: a cross-site POST has no CSRF token
            forged = await page.request.post(f"{gw.endpoint}/audit/api/approvals/{aid}/approve")
            assert forged.status == 403 and "CSRF" in (await forged.json())["error"]["message"]
            await item.locator("input.reason").fill("the answer")
            await item.locator("button.approve").click()
            await page.wait_for_selector("p.decision:has-text('approved by bob')")
            assert await call(gw, alice, "add", {"a": 20, "b": 22}) == (True, json.dumps({"result": 42}))
            passed, used = await call(gw, alice, "add", {"a": 20, "b": 22})
            assert not passed and f"approval {aid} was already used" in used

            # the session's timeline shows the hold and the approval used, linked to its page
            bob = {"authorization": f"Bearer {issuer.mint('bob', aud=gw.endpoint, groups=['sre'])}"}

            def session_with_approval() -> str | None:
                r = httpx.get(f"{gw.endpoint}/audit/api/sessions", params={"tool": "add"}, headers=bob, timeout=10)
                for row in r.json()["sessions"]:
                    events = httpx.get(f"{gw.endpoint}/audit/api/sessions/{row['session']}/events", headers=bob)
                    if '"consumed"' in events.text:
                        return str(row["session"])
                return None

            ready = lambda: session_with_approval() is not None  # noqa: E731
            await asyncio.to_thread(wait_until, ready, 30, "the used approval in the index", 0.2)
            await page.goto(f"{gw.endpoint}/audit/s/{session_with_approval()}")
            used_badge = page.locator("li[data-type='policy.decision'] .approval-consumed")
            await used_badge.first.wait_for()
            assert await page.locator(f"li[data-type='policy.decision'] a[href$='approvals/{aid}']").count() >= 2
        finally:
            await browser.close()


async def test_a_2026_client_gets_a_url_elicitation_and_retries_by_itself(
    start_authed, start_mcp_server, issuer: DevIssuer, tmp_path: Path
) -> None:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp_types import ElicitResult

    server = start_mcp_server("demo")
    key, _ = generate_keys(tmp_path / "keys")
    gateway = {
        "recording": {"signing_key": str(key)},
        "audit": {"port": free_port()},
        "approvals": {"directory": str(tmp_path / "approvals")},
    }
    gw = start_authed([server], policy=POLICY, gateway=gateway)
    alice = issuer.mint("alice", aud=gw.endpoint, groups=["eng"])
    bob = {"authorization": f"Bearer {issuer.mint('bob', aud=gw.endpoint, groups=['sre'])}"}
    asked: list[dict] = []

    async def approver_opens_the_page(ctx, params) -> ElicitResult:  # the user follows the URL; bob approves
        asked.append(params.model_dump(by_alias=True))
        async with httpx2.AsyncClient() as http:
            r = await http.post(
                f"{params.url.replace('/audit/approvals/', '/audit/api/approvals/')}/approve", headers=bob
            )
        assert r.status_code == 200, r.text
        return ElicitResult(action="accept")

    async with httpx2.AsyncClient(headers={"authorization": f"Bearer {alice}"}) as http:
        async with Client(
            streamable_http_client(gw.url(), http_client=http), elicitation_callback=approver_opens_the_page, cache=None
        ) as client:
            result = await client.call_tool("add", {"a": 40, "b": 2})
    assert result.structured_content == {"result": 42}
    [ask] = asked
    assert ask["mode"] == "url" and ID.fullmatch(ask["elicitationId"]) and ask["url"].endswith(ask["elicitationId"])
    calls = [r for r in server.seen() if r["method"] == "tools/call"]
    assert [c["tool"] for c in calls] == ["add"]  # the held round never reached the server, the retry did once
    gw.stop()
    decisions = [e for e in events(gw) if e["type"] == "policy.decision" and e.get("approval")]
    assert [(e["approval"]["state"], e["allowed"]) for e in decisions] == [("pending", False), ("consumed", True)]
    requests = [m for e in events(gw) if e["type"] == "mcp.request" for m in e["messages"]]
    retry = [m for m in requests if m.get("params", {}).get("inputResponses")]
    assert retry and "mcp-extproc/approval" in retry[0]["params"]["inputResponses"]  # recorded as the client sent it
