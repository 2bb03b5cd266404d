"""The web viewer in headless Chromium (Debian's package, driven by Playwright): log in through the dev issuer's
OIDC code flow, find a session, play it back, see an incomplete session marked, be refused one outside the grant.

Screenshots are kept under tests/artifacts/audit/ (gitignored).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import pytest
from gateway_parts import Gateway, open_session, recording_key

from extproc.authn.dev_issuer import DevIssuer
from extproc.demo.mcp_client import run_session
from extproc.launcher import free_port, wait_until
from extproc.recording.manifest import generate_keys

CHROMIUM = "/usr/bin/chromium"
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

    def indexed() -> bool:
        r = httpx.get(f"{gw.endpoint}/audit/api/sessions", headers={"authorization": f"Bearer {token('x', 'team-a')}"})
        rows = {s["session"]: s["state"] for s in r.json()["sessions"]}
        return rows.get(played) == "complete" and rows.get(incomplete) == "incomplete"

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
