"""The digest chain through real parts: Envoy, the processor as `mcp-extproc up` runs it, the MCP SDK client."""

from __future__ import annotations

import shutil
from pathlib import Path

from gateway_parts import unit_key
from recording_helpers import cli

from extproc.demo.mcp_client import run_session
from extproc.recording.manifest import generate_keys


async def test_processor_writes_signed_digests_and_store_verify_names_a_deleted_session(
    start_mcp_server, start_gateway, tmp_path: Path
) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    gw = start_gateway([start_mcp_server("demo")], recording={"signing_key": str(key)})
    first = await run_session(gw.url())
    second = await run_session(gw.url())
    gw.stop()  # the processor's closing digest lists the segments of both sessions
    root = gw.store.root

    ok = cli("store", "verify", "--dir", str(root), "--public-key", str(pub))
    assert ok.returncode == 0, ok.stdout
    assert "signatures checked" in ok.stdout
    assert "no closing digest" not in ok.stdout

    shutil.rmtree(root / unit_key(gw.store, second.session_id))
    gone = cli("store", "verify", "--dir", str(root), "--public-key", str(pub))

    assert gone.returncode == 1
    assert f"session {second.session_id!r} missing (deleted)" in gone.stdout
    assert not [line for line in gone.stdout.splitlines() if "FAIL" in line and first.session_id in line]
