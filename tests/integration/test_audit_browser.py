"""The web viewer in headless Chromium (Debian's package, driven by Playwright): log in through the dev issuer's
OIDC code flow, find a session, play it back, see an incomplete session marked, be refused one outside the grant.

Screenshots are kept under tests/artifacts/audit/ (gitignored).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_parts import Gateway, open_session, recording_key
from guardrail_server import GuardrailServer
from synthetic import session_segments

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import connect, run_session
from extproc.launcher import free_port, wait_until
from extproc.recording.manifest import Signer, generate_keys

CHROMIUM = "/usr/bin/chromium"
ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "audit"
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

async_api = pytest.importorskip("playwright.async_api")


def _kill_mid_call(gw: Gateway, token: str) -> str:
    """A session whose processor is killed (-9) during a streaming tool call: the completer marks it incomplete."""
    headers = open_session(gw.url("alpha"), token)
    call = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "tools/call",
        "params": {"name": "count_slowly", "arguments": {"n": 40, "delay": 0.1}, "_meta": {"progressToken": "p"}},
    }
    try:
        with httpx.stream("POST", gw.url("alpha"), json=call, headers=headers, timeout=20) as r:
            for n, line in enumerate(r.iter_lines()):
                if n >= 6 and '"progress"' in line:
                    gw.stack.processors[0].kill()
                    break
    except httpx.HTTPError:
        pass
    gw.stack.restart_worker(0)
    return recording_key(headers["mcp-session-id"], "alpha")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
async def test_web_viewer_login_find_play_incomplete_and_refused(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path
) -> None:
    key, _ = generate_keys(tmp_path / "keys")
    gateway = {
        "recording": {"signing_key": str(key), "segment_max_age_ms": 100, "completer_interval_s": 0.5},
        "audit": {"port": free_port(), "index_interval_ms": 100, "client_id": "audit-viewer"},
    }
    gw = start_authed([start_mcp_server("alpha"), start_mcp_server("beta")], policy=POLICY, gateway=gateway)

    def token(who: str, *groups: str) -> str:
        return issuer.mint(who, aud=gw.endpoint, groups=list(groups))

    played = recording_key((await run_session(gw.url("alpha"), token("bob"))).session_id, "alpha")
    hidden = recording_key((await run_session(gw.url("beta"), token("bob"))).session_id, "beta")
    incomplete = await asyncio.to_thread(_kill_mid_call, gw, token("bob"))
    # A stateless client's run across three windows (one unit per window; recording/units.py), written as stored.
    runs = [f"r-0123456789abcdef-{w:x}" for w in (0x6000, 0x6100, 0x6200)]
    for i, unit in enumerate(runs):
        for seg in session_segments(unit, server="alpha", user="bob", started=1.7e9 + i, signer=Signer.from_file(key)):
            await gw.store.put_segment(seg)

    def indexed() -> bool:
        r = httpx.get(f"{gw.endpoint}/audit/api/sessions", headers={"authorization": f"Bearer {token('x', 'team-a')}"})
        rows = {s["session"]: s["state"] for s in r.json()["sessions"]}
        return rows.get(played) == "complete" and rows.get(incomplete) == "incomplete" and set(runs) <= set(rows)

    await asyncio.to_thread(wait_until, indexed, 30, "the sessions in the index", 0.2)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    base = f"{gw.endpoint}/audit/"

    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        try:
            page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
            page.set_default_timeout(15_000)
            # Log in through the issuer's Authorization Code + PKCE flow.
            await page.goto(base)
            await page.click("#login")
            await page.fill("#username", "alice")
            await page.fill("#groups", "team-a")
            await page.screenshot(path=str(ARTIFACTS / "1-issuer-login.png"))
            await page.click("#sign-in")
            await page.wait_for_selector(f'tr[data-session="{played}"]')
            cookies = {c["name"]: c for c in await page.context.cookies()}
            assert cookies["mcp_audit"]["httpOnly"] and cookies["mcp_audit"]["sameSite"] == "Lax"
            assert await page.locator(f'tr[data-session="{hidden}"]').count() == 0
            await page.screenshot(path=str(ARTIFACTS / "2-session-list.png"), full_page=True)

            # Find the session by filters (a shareable URL), open it, verify it, play it back.
            await page.fill("#f-user", "bob")
            await page.fill("#f-tool", "echo")
            await page.keyboard.press("Enter")
            await page.wait_for_url("**/audit/?user=bob&tool=echo")
            await page.click(f'tr[data-session="{played}"] a')
            await page.wait_for_selector("#timeline li")
            await page.click("#verify")
            await page.wait_for_selector("#findings .verified-yes")
            await page.select_option("#speed", "16")
            total = await page.locator("#timeline li").count()
            await page.click("#play")
            await page.wait_for_selector("#playback:has-text('finished')")
            assert f"{total} / {total} events" in await page.text_content("#playback")
            await page.screenshot(path=str(ARTIFACTS / "3-session-played.png"), full_page=True)
            await page.click("#step")  # after the end, Step starts again from the first event
            assert (await page.text_content("#playback") or "").startswith("1 /")

            # The incomplete session is marked in the list and on its page.
            await page.goto(base + "?state=incomplete")
            row = page.locator(f'tr[data-session="{incomplete}"]')
            await row.wait_for()
            assert await row.locator(".state-incomplete").count() == 1
            await row.locator("a").click()
            await page.wait_for_selector("#incomplete-note")
            await page.screenshot(path=str(ARTIFACTS / "4-incomplete.png"), full_page=True)

            # A run's unit links the same client's units of the windows before and after; following one goes on.
            await page.goto(base + f"s/{runs[1]}")
            links = page.locator("#run-windows a")
            await links.nth(1).wait_for()
            assert [await a.get_attribute("href") for a in await links.all()] == [f"/audit/s/{u}" for u in runs[::2]]
            await links.nth(1).click()
            await page.wait_for_selector(f"h1:has-text('{runs[2]}')")
            assert await page.locator("#run-windows a").all_text_contents() == ["← window before"]

            # A session outside the grant: the same "no such session" as one that does not exist.
            await page.goto(base + f"s/{hidden}")
            await page.wait_for_selector("#error")
            assert await page.text_content("#error") == "no such session"
            await page.screenshot(path=str(ARTIFACTS / "5-refused.png"))

            # Logged in, a state-changing request without the CSRF token (or with a wrong one) is refused.
            for form in ({}, {"csrf": "forged"}):
                refused = await page.request.post(base + "logout", form=form, max_redirects=0)
                assert refused.status == 403, form
            # Logout (the form carries the CSRF token) ends the login.
            await page.goto(base)
            await page.click("#logout button")
            await page.wait_for_selector("#login")
        finally:
            await browser.close()


DENY_ADD = """
apiVersion: mcp-extproc/v1
rules:
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
  - name: no-add
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [alpha], tools: [add]}
viewers:
  - name: team-a-sees-alpha
    subjects: {groups: [team-a]}
    servers: [alpha]
    sessions: all
"""
FIRST_HOUR = ARTIFACTS / "first-hour"
UTC_TIME = r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"
# A page that is wider than the screen, or whose header stops short of its right edge.
LAYOUT = """() => ({scroll: document.documentElement.scrollWidth, inner: window.innerWidth,
                    header: Math.round(document.querySelector("header").getBoundingClientRect().width)})"""
# Text under <main> outside the JSON blocks (where a null is data): the viewer itself must never print "null".
STRAY_NULL = """() => { const w = document.createTreeWalker(document.getElementById("main"), NodeFilter.SHOW_TEXT);
                        for (let n = w.nextNode(); n; n = w.nextNode()) {
                          if (!n.parentElement.closest("pre") && /\\bnull\\b/.test(n.textContent)) return true;
                        }
                        return false; }"""


async def _refused_session(url: str, token: str) -> str:
    """echo (allowed), then add (denied by rule no-add: 403, no upstream response), then the session's end."""
    async with connect(url, token, "legacy") as conn:  # legacy: DELETE at the end, the session is complete
        await conn.client.call_tool("echo", {"text": "hello"})
        try:
            await conn.client.call_tool("add", {"a": 1, "b": 2})
        except Exception:  # the SDK raises the JSON-RPC error the gateway answered with
            pass
        return recording_key(conn.session_id, "alpha")


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
async def test_viewer_first_hour_login_off_denials_times_since_and_narrow_screens(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path
) -> None:
    """What a newcomer meets in the first hour, each a check of its own (all failures are reported together)."""
    key, _ = generate_keys(tmp_path / "keys")
    gateway = {
        "recording": {"signing_key": str(key), "segment_max_age_ms": 100, "completer_interval_s": 0.5},
        "audit": {"port": free_port(), "index_interval_ms": 100},  # no client_id: the default
    }
    gw = start_authed([start_mcp_server("alpha")], policy=DENY_ADD, gateway=gateway)
    viewer = issuer.mint("alice", aud=gw.endpoint, groups=["team-a"])
    plain = recording_key(
        (await run_session(gw.url("alpha"), issuer.mint("bob", aud=gw.endpoint), mode="legacy")).session_id, "alpha"
    )
    refused = await _refused_session(gw.url("alpha"), issuer.mint("bob", aud=gw.endpoint))

    def indexed() -> bool:
        r = httpx.get(f"{gw.endpoint}/audit/api/sessions", headers={"authorization": f"Bearer {viewer}"})
        rows = {s["session"]: s["state"] for s in r.json()["sessions"]}
        return rows.get(plain) == "complete" and rows.get(refused) == "complete"

    await asyncio.to_thread(wait_until, indexed, 30, "the sessions in the index", 0.2)
    shutil.rmtree(FIRST_HOUR, ignore_errors=True)
    FIRST_HOUR.mkdir(parents=True)
    base = f"{gw.endpoint}/audit/"
    problems: list[str] = []

    def check(ok: object, what: str) -> None:
        if not ok:
            problems.append(what)

    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        try:
            # 1. Login is off (no audit.client_id): no Log in link that cannot work, but how to turn it on.
            anon = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
            anon.set_default_timeout(15_000)
            await anon.goto(base)
            await anon.wait_for_selector("main h1")
            await anon.screenshot(path=str(FIRST_HOUR / "login-off-1280.png"))
            check(await anon.locator("#login").count() == 0, "login off: the page still offers a Log in link")
            check(await anon.locator("#login-off").count() == 1, "login off: no explanation of how to turn it on")
            check("audit.client_id" in (await anon.text_content("main") or ""), "login off: audit.client_id unnamed")
            r = await anon.goto(base + "login")
            check(r is not None and r.ok and "html" in r.headers.get("content-type", ""), "login off: /login not HTML")

            for width, height in ((1280, 900), (420, 860)):
                ctx = await browser.new_context(
                    viewport={"width": width, "height": height},
                    extra_http_headers={"authorization": f"Bearer {viewer}"},
                )
                page = await ctx.new_page()
                page.set_default_timeout(15_000)
                # The list: a denial count on the session holding one; times in UTC, local time on hover.
                await page.goto(base)
                await page.wait_for_selector(f'tr[data-session="{refused}"]')
                await page.screenshot(path=str(FIRST_HOUR / f"list-{width}.png"), full_page=True)
                layout = await page.evaluate(LAYOUT)
                check(layout["scroll"] <= layout["inner"], f"list at {width}px overflows: {layout}")
                check(
                    layout["header"] >= max(layout["inner"], layout["scroll"]),
                    f"list at {width}px: header short of the width: {layout}",
                )
                badge = page.locator(f'tr[data-session="{refused}"] .denied-count')
                check(await badge.count() == 1 and "1 denied" in (await badge.text_content() or ""), "no denial badge")
                check(await page.locator(f'tr[data-session="{plain}"] .denied-count').count() == 0, "badge w/o denial")
                started = page.locator(f'tr[data-session="{refused}"] time')
                if await started.count() != 1:
                    problems.append("list: the start is not a <time>")
                else:
                    check(re.match(UTC_TIME, (await started.text_content() or "").strip()), "list: time not in UTC")
                    check(await started.get_attribute("title"), "list: no local time on hover")

                # The session page: no stray "null"; the refused call with its status and rule.
                await page.click(f'tr[data-session="{refused}"] a')
                await page.wait_for_selector("#calls .callwrap")
                await page.screenshot(path=str(FIRST_HOUR / f"session-{width}.png"), full_page=True)
                await page.screenshot(path=str(FIRST_HOUR / f"session-{width}-top.png"))
                layout = await page.evaluate(LAYOUT)
                check(layout["scroll"] <= layout["inner"], f"session at {width}px overflows: {layout}")
                check(
                    layout["header"] >= max(layout["inner"], layout["scroll"]),
                    f"session at {width}px: header short: {layout}",
                )
                check(not await page.evaluate(STRAY_NULL), "session page shows a stray 'null'")
                denied = page.locator("#calls .callwrap", has_text="tools/call add")
                text = ""
                if await denied.count() == 1:
                    text = await denied.text_content()
                    await denied.screenshot(path=str(FIRST_HOUR / f"refused-call-{width}.png"))
                check("refused 403" in (text or "") and "no-add" in (text or ""), f"refused call unexplained: {text!r}")
                check("no response" not in (text or ""), "the refused call says 'no response'")
                summary = await page.text_content("#summary") or ""
                check(re.search(r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", summary), f"summary time: {summary!r}")

                # since=24h, as the CLI accepts it, through the filter form.
                await page.goto(base)
                await page.wait_for_selector(f'tr[data-session="{refused}"]')
                await page.fill("#f-since", "24h")
                await page.keyboard.press("Enter")
                await page.wait_for_url("**/audit/?since=24h")
                await page.wait_for_selector(f'tr[data-session="{refused}"], .error')
                check(
                    await page.locator(".error").count() == 0, f"since=24h refused: {await page.text_content('main')}"
                )
                await ctx.close()
        finally:
            await browser.close()
    assert not problems, "\n".join(problems)


INTEGRITY = """
apiVersion: mcp-extproc/v1
rules:
  - name: allow-everything
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
integrity:
  - servers: [demo]
    on_change: hide
viewers:
  - name: team-a-sees-all
    subjects: {groups: [team-a]}
    servers: [demo, beta]
    sessions: all
"""
TX_CLIENT, TX_API = "mcp-gateway", "demo-api"  # the gateway at the issuer; the sample server's audience there
HEX12 = r"[0-9a-f]{12}"


@pytest.fixture
def guard() -> Iterator[GuardrailServer]:
    """A guardrail that allows every call and result: its verdicts are recorded and shown."""
    with GuardrailServer({}) as g:
        yield g


async def _rug_pull_session(gw: Gateway, token: str) -> str:
    """echo as listed; the server changes echo (hidden: the call is refused); a person approves the change; echo
    again (the caller was shown the old definition: flagged changed)."""
    async with connect(gw.url(), token, "legacy") as conn:
        await conn.client.list_tools()
        hidden = await conn.client.call_tool("echo", {"text": "h\u200bi"})  # screened: the caller gets it stripped
        assert hidden.structured_content == {"result": "hi"}
        assert "echo" not in {t.name for t in (await conn.client.list_tools()).tools}
        with pytest.raises(Exception, match="tool-surface integrity"):
            await conn.client.call_tool("echo", {"text": "b"})
        cmd = [sys.executable, "-m", "extproc", "pins", "approve", "--server", "demo", "--tool", "echo"]
        ok = subprocess.run(
            [*cmd, "--by", "carol", "--config", str(gw.stack.config)], capture_output=True, text=True, timeout=60
        )
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert (await conn.client.call_tool("echo", {"text": "c"})).structured_content == {"result": "c"}
        return recording_key(conn.session_id)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
async def test_viewer_shows_listed_definitions_changes_and_upstream_credentials(
    start_mcp_server, start_authed, issuer: DevIssuer, tmp_path: Path, guard: GuardrailServer
) -> None:
    """Per call: "as listed at <time> UTC, fingerprint <short>", flagged when withheld or changed; the change in the
    timeline with old and new fingerprints; the upstream credential (kind, hash, expiry, who acted for whom) and
    the IdP's refusal, never a token; what a result screen found and did, and the guardrail's verdicts on the call
    and on its result. At 1280 and 420 px."""
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret-of-the-gateway\n")
    issuer.token_exchange.register_client(TX_CLIENT, secret="s3cret-of-the-gateway")
    issuer.token_exchange.add_target(TX_API, scopes=("repo:read",), ttl=300)
    verify = ["--verify-jwks", f"{issuer.url}/jwks", "--verify-issuer", issuer.url, "--verify-audience", TX_API]
    demo = start_mcp_server("demo", False, "--rug-pull", *verify)
    beta = start_mcp_server("beta")
    exchange = {"kind": "token_exchange", "client_id": TX_CLIENT, "client_secret_file": str(secret)}
    entries = [
        {
            "name": "demo",
            "upstream": demo.upstream,
            "upstream_auth": {**exchange, "audience": TX_API, "scopes": ["repo:read"]},
            "guardrail": {"url": guard.url, "timeout_ms": 5000, "results": True},
        },
        {
            "name": "beta",
            "upstream": beta.upstream,
            "upstream_auth": {**exchange, "audience": "unknown-api", "scopes": ["repo:read"]},
        },
    ]
    key, _ = generate_keys(tmp_path / "keys")
    gateway = {
        "server_entries": entries,
        "recording": {"signing_key": str(key), "segment_max_age_ms": 100},
        "audit": {"port": free_port(), "index_interval_ms": 100},
    }
    gw = start_authed([demo, beta], policy=INTEGRITY, gateway=gateway)
    viewer = issuer.mint("alice", aud=gw.endpoint, groups=["team-a"])
    bob = issuer.mint("bob", aud=gw.endpoint)
    pulled = await _rug_pull_session(gw, bob)
    refused = httpx.post(gw.url("beta"), json=INIT, headers={**ACCEPT, "authorization": f"Bearer {bob}"}, timeout=10)
    assert refused.status_code == 403 and "invalid_target" in refused.text
    rows: dict[str, dict] = {}

    def indexed() -> bool:
        r = httpx.get(f"{gw.endpoint}/audit/api/sessions", headers={"authorization": f"Bearer {viewer}"})
        rows.update({s["server"]: s for s in r.json()["sessions"]})
        return "beta" in rows and any(s["session"] == pulled and s["state"] == "complete" for s in r.json()["sessions"])

    await asyncio.to_thread(wait_until, indexed, 30, "the sessions in the index", 0.2)
    out = ARTIFACTS / "integrity"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    base = f"{gw.endpoint}/audit/"
    problems: list[str] = []

    def check(ok: object, what: str) -> None:
        if not ok:
            problems.append(what)

    blocked: list[str] = []  # the CSP stays strict: nothing inline was needed

    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        try:
            for width, height in ((1280, 900), (420, 860)):
                ctx = await browser.new_context(
                    viewport={"width": width, "height": height},
                    extra_http_headers={"authorization": f"Bearer {viewer}"},
                )
                page = await ctx.new_page()
                page.set_default_timeout(15_000)
                page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
                await page.goto(base + f"s/{pulled}")
                await page.wait_for_selector("#calls .callwrap")
                await page.screenshot(path=str(out / f"rug-pull-{width}.png"), full_page=True)
                layout = await page.evaluate(LAYOUT)
                check(layout["scroll"] <= layout["inner"], f"session at {width}px overflows: {layout}")
                check(not await page.evaluate(STRAY_NULL), "session page shows a stray 'null'")
                echoes = page.locator("#calls .callwrap", has_text="tools/call echo")
                await echoes.nth(2).wait_for()
                check(await echoes.count() == 3, f"{await echoes.count()} echo calls, expected 3")
                texts = ["".join(await echoes.nth(i).locator(".listed").all_text_contents()) for i in range(3)]
                listed = rf"as listed at \d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d UTC, fingerprint {HEX12}"
                check(texts and re.match(listed + "$", texts[0]), f"first call: {texts[:1]}")
                check(len(texts) > 1 and "WITHHELD" in texts[1], f"the refused call is not flagged: {texts[1:2]}")
                check(
                    len(texts) > 2 and re.match(listed + " CHANGED", texts[2]) and "decision hide" in texts[2],
                    f"the approved call against the old definition is not flagged changed: {texts[2:]}",
                )
                screened = echoes.nth(0).locator(".screened")
                stext = await screened.first.text_content() if await screened.count() == 1 else ""
                check(
                    re.match(r"stripped result screened, stripped before the client saw it: invisible zero-width at "
                             r"/\S+ \[1:2\] \"U\+200B\"", stext or ""),
                    f"screened line: {stext!r}",
                )  # fmt: skip
                verdicts = await echoes.nth(0).locator(".guardrail").all_text_contents()
                check(
                    [v.split(", ")[0] for v in verdicts]
                    == [
                        f"allow guardrail on the {phase}: allow (rule allow for echo) -> passed"
                        for phase in ("request", "result")
                    ],
                    f"guardrail lines: {verdicts}",
                )
                timeline_screens = page.locator('#timeline li[data-type="result.screened"] .screened')
                check(await timeline_screens.count() == 1, "the timeline does not show result.screened")
                found = await page.locator("#exchanges .definition-screened").all_text_contents()
                check(
                    [f for f in found if re.match(
                        r"screened tool echo screened \(withheld from the caller, pin changed\): instructions "
                        r"authority-tag at /description \[\d+:\d+\] \"<IMPORTANT>\" -> alarm", f)],
                    f"the changed echo's description screened: {found}",
                )  # fmt: skip
                first = echoes.nth(0).locator(".credential")
                cred = await first.text_content() if await first.count() == 1 else ""
                check(
                    re.match(rf"upstream token_exchange in authorization, sha256 {HEX12}, expires .* UTC, "
                             rf"{TX_CLIENT} acting for bob", cred or ""),
                    f"credential line: {cred!r}",
                )  # fmt: skip
                change = page.locator('#timeline li[data-type="definition.changed"]')
                ctext = await change.text_content() if await change.count() == 1 else ""
                check(
                    re.search(rf"echo on demo: {HEX12} → {HEX12} decision hide \(policy.yaml:\d+\)$", ctext or ""),
                    f"timeline: {ctext!r}",
                )
                await echoes.nth(2).screenshot(path=str(out / f"changed-call-{width}.png"))
                await change.screenshot(path=str(out / f"timeline-change-{width}.png"))

                await page.goto(base + f"s/{rows['beta']['session']}")
                await page.wait_for_selector("#timeline li")
                await page.screenshot(path=str(out / f"idp-refused-{width}.png"), full_page=True)
                await page.locator("#exchanges").screenshot(path=str(out / f"idp-refused-exchange-{width}.png"))
                idp = page.locator("#exchanges .refused-credential")
                itext = await idp.first.text_content() if await idp.count() else ""
                check("IdP refused invalid_target" in (itext or ""), f"IdP refusal: {itext!r}")
                main = await page.text_content("main") or ""
                check(bob.split(".")[2] not in main, "a token is on the page")
                check(not blocked, f"CSP violations: {blocked}")
                await ctx.close()
        finally:
            await browser.close()
    assert not problems, "\n".join(problems)
