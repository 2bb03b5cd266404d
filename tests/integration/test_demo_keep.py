"""`mcp-extproc demo --keep` as a newcomer runs it: the banner's URL and token work with the SDK's client, the
policy's denial shows, the live feed prints each exchange, and Ctrl-C stops every part and leaves a verified store
(the audit trail closed)."""

from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from extproc.demo.keep import READY
from extproc.demo.mcp_client import connect
from extproc.launcher import wait_until
from extproc.recording.audit import audit
from extproc.recording.manifest import load_public_key
from extproc.recording.replay import load_session
from extproc.recording.store.file import FileStore


def _descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: children lists of each task)."""
    out: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                if child not in out:
                    out.add(child)
                    todo.append(child)
    return out


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state == "Z"


def _viewer_login_as_the_banner_says(viewer: str) -> None:
    """The viewer's real login: its redirect to the dev issuer's login page, the form filled in as the banner
    says, the callback; then /api/me names the auditor."""
    with httpx.Client(timeout=30) as http:
        page = http.get(f"{viewer}login", follow_redirects=True)
        assert page.status_code == 200 and "Development login" in page.text, page.text
        form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page.text))
        form = {k: html.unescape(v) for k, v in form.items()}
        signed_in = http.post(
            str(page.url.copy_with(query=None)), data={**form, "username": "auditor", "groups": "security"}
        )
        assert signed_in.status_code == 302
        http.get(signed_in.headers["location"], follow_redirects=True)
        me = http.get(f"{viewer}api/me")
        assert me.status_code == 200 and "auditor" in me.text, me.text


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
async def test_demo_keep_serves_until_ctrl_c_and_leaves_a_verified_store(tmp_path: Path, stop: str) -> None:
    workdir = tmp_path / "demo"
    out = tmp_path / "demo.out"
    cmd = [sys.executable, "-m", "extproc", "demo", "--keep", "--workdir", str(workdir)]
    with out.open("wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--port", "0", "--issuer-port", "0"], stdout=log, stderr=log, start_new_session=True
        )
    try:
        wait_until(lambda: READY in out.read_text() or proc.poll() is not None, 120, "the ready banner")
        text = out.read_text()
        assert READY in text, text
        url = re.search(r"MCP endpoint \(Streamable HTTP\): (\S+)", text)[1]  # type: ignore[index]
        github = url.replace("/demo/mcp", "/github/mcp")
        tokens = dict(re.findall(r"token for (\w+) \(.*\n(\S+)", text))
        assert set(tokens) == {"alice", "bob", "auditor"}
        assert re.search(r"expires \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", text)
        entry = json.loads((workdir / "mcp.json").read_text())["mcpServers"]["mcp-extproc-demo"]
        assert entry == {"url": url, "headers": {"Authorization": f"Bearer {tokens['alice']}"}}
        viewer = re.search(r"audit viewer: (\S+)\s+log in as 'auditor'", text)[1]  # type: ignore[index]

        async with connect(url, token=tokens["alice"]) as conn:
            echo = await conn.client.call_tool("echo", {"text": "hello from the test"})
            assert echo.structured_content == {"result": "hello from the test"}
        async with connect(github, token=tokens["alice"]) as conn:
            listed = await conn.client.call_tool("list_issues", {"owner": "acme", "repo": "x"})
            assert not listed.is_error
            with pytest.raises(Exception, match="github-no-destructive"):  # the SDK's error for a JSON-RPC error
                await conn.client.call_tool("delete_repository", {"owner": "acme", "repo": "x"})

        def auditor_sees_sessions() -> bool:  # the index catches up every index_interval_ms
            auth = {"authorization": f"Bearer {tokens['auditor']}"}
            r = httpx.get(f"{viewer}api/sessions", headers=auth, timeout=30)
            assert r.status_code == 200, r.text
            return bool(r.json()["sessions"])

        wait_until(auditor_sees_sessions, 30, "the auditor to see alice's sessions in the audit API")

        _viewer_login_as_the_banner_says(viewer)

        feed = r"alice\s+github\s+tools/call delete_repository\s+deny \(github-no-destructive\) 403 \d+ ms"
        wait_until(lambda: re.search(feed, out.read_text()) is not None, 30, "the denial in the live feed")
        assert re.search(r"alice\s+demo\s+tools/call echo\s+allow \(demo-echo-short\) 200 \d+ ms", out.read_text())

        children = _descendants(proc.pid)
        assert len(children) >= 5  # two sample servers, processor, Envoy, audit service
        if stop == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        else:
            proc.send_signal(signal.SIGTERM)  # a service manager or `kill`: the demo process alone
        assert proc.wait(90) == 0, out.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            for pid in _descendants(proc.pid):
                os.kill(pid, signal.SIGKILL)
            os.killpg(proc.pid, signal.SIGKILL)
    wait_until(lambda: all(_gone(p) for p in children), 10, "every part of the demo to exit")
    text = out.read_text()
    assert f"recordings in {workdir / 'recordings'}" in text
    assert "Traceback" not in text

    store, key = FileStore(workdir / "recordings"), load_public_key(workdir / "keys" / "signing.pub")
    result = audit(store, key)
    assert result.findings == []
    assert not [n for n in result.notes if "no closing digest" in n], result.notes  # processor and audit trail
    sessions = store.list_sessions()
    assert any(s.startswith("audit-") for s in sessions)  # the auditor's listing is on the trail
    for key_name in sessions:
        session = load_session(store, key_name, key)
        assert session.problems == [] and session.unfinished == [], key_name
