"""The viewer's verify page in headless Chromium: every record-format vector, good and broken, verified in the
browser (WebCrypto Ed25519 + SHA-256) with exactly the findings the other verifiers report, and no request made."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from bundle_mutations import comparable, mutations

from extproc.audit.web import static_dir
from extproc.evidence import bundle
from extproc.recording.manifest import load_public_key

CHROMIUM = "/usr/bin/chromium"
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "record-format"
CASES = sorted(p.name for p in (VECTORS / "cases").iterdir())

async_api = pytest.importorskip("playwright.async_api")


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def served() -> Iterator[str]:
    """The viewer's static files, as the audit service serves them under /static/ (a plain server: no login)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(static_dir())))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
async def test_every_vector_verifies_in_the_browser_as_expected(served: str, tmp_path: Path) -> None:
    published = (VECTORS / "published.pub").read_text()
    not_a_bundle = tmp_path / "not-a-bundle.json"
    not_a_bundle.write_text('{"format": "other"}')
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"],
        )  # fmt: skip
        try:
            page = await (await browser.new_context()).new_page()
            page.set_default_timeout(20_000)
            requests: list[str] = []
            await page.goto(served + "verify.html")
            page.on("request", lambda r: requests.append(r.url))
            await page.fill("#key", published)
            for case in CASES:
                await page.set_input_files("#bundle", str(VECTORS / "cases" / case / "bundle.json"))
                await page.click("#verify")
                await page.wait_for_selector("#result-json:not(:empty)", state="attached")
                got = json.loads(await page.text_content("#result-json") or "")
                want = json.loads((VECTORS / "cases" / case / "expected.json").read_bytes())
                assert got == {"findings": want["findings"], "open": want["open"], "ok": want["ok"]}, case
                verdict = await page.text_content("#verdict") or ""
                assert verdict.startswith("Intact") == want["ok"], (case, verdict)
                checks = await page.locator("ul.checks li").all_text_contents()
                assert any("manifest signatures (Ed25519, key " in c for c in checks), (case, checks)
                assert any(c.startswith("digest chain of writer") for c in checks), (case, checks)

            # The page's own key would make a forged history look intact: with the published key it does not.
            await page.fill("#key", "")
            await page.set_input_files("#bundle", str(VECTORS / "cases" / "wrong-key" / "bundle.json"))
            await page.click("#verify")
            await page.wait_for_selector("#result-json:not(:empty)", state="attached")
            assert json.loads(await page.text_content("#result-json") or "")["ok"] is True
            assert "key inside the bundle" in " ".join(await page.locator("ul.notes li").all_text_contents())

            await page.set_input_files("#bundle", str(not_a_bundle))
            await page.click("#verify")
            await page.wait_for_selector("#result-json:not(:empty)", state="attached")
            assert "not a session bundle" in (await page.text_content("#verdict") or "")
            assert requests == [], requests  # every verification ran in the page
        finally:
            await browser.close()


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium not installed (make test installs it)")
async def test_the_browser_agrees_on_random_edits(served: str, tmp_path: Path) -> None:
    """Beyond the named vectors: 60 seeded one-byte edits of the good bundle, the page against the library."""
    key = load_public_key(VECTORS / "published.pub")
    async with async_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await (await browser.new_context()).new_page()
            page.set_default_timeout(20_000)
            await page.goto(served + "verify.html")
            await page.fill("#key", (VECTORS / "published.pub").read_text())
            for n, doc in enumerate(mutations(seed=2026, count=60)):
                path = tmp_path / f"m{n}.json"
                path.write_text(json.dumps(doc))
                await page.set_input_files("#bundle", str(path))
                await page.click("#verify")
                await page.wait_for_selector("#result-json:not(:empty)", state="attached")
                got = json.loads(await page.text_content("#result-json") or "")
                ours = bundle.verify(doc, key)
                assert (comparable(got["findings"]), got["open"]) == (comparable(ours.findings), sorted(ours.open)), n
        finally:
            await browser.close()
