"""The top-level CLI: --version, and gateway.yaml problems reported as file:line before anything starts."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from extproc import __version__
from extproc.cli import app

runner = CliRunner()


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output == f"mcp-extproc {__version__}\n"


def test_config_errors_name_file_line_and_a_spelling(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.yaml"
    cfg.write_text("servers:\n  - name: a\n    upstream: 127.0.0.1:1\nrecordng: {}\n")

    result = runner.invoke(app, ["envoy-config", "-c", str(cfg)])

    assert result.exit_code == 2
    assert f"{cfg}:4: recordng: unknown key (did you mean 'recording'?)" in result.output.replace("\n", "")


def test_output_into_a_pipe_never_breaks_a_line_mid_word(tmp_path: Path) -> None:
    """The real CLI with stdout a pipe (not a terminal, no COLUMNS): paths, ids and table cells stay whole."""
    import asyncio
    import os
    import subprocess
    import sys

    from extproc.recording.events import ExchangeEnd, ExchangeStart
    from extproc.recording.recorder import Recorder
    from extproc.recording.spool import Spool
    from extproc.recording.store.file import FileStore
    from extproc.recording.writer import RecorderOptions

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    out = tmp_path / ("a-folder-with-a-long-name-" * 3) / "keys"

    def run(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "extproc", *args], capture_output=True, text=True, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    keys = run("keys", "generate", "--out", str(out))
    assert any(f"public key  {out / 'signing.pub'} (give to auditors" in line for line in keys.splitlines()), keys

    session = "8f14e45fceea167a5a36dedd4bea2543-" + "0d9c6b8e5c1f4c4e9a530f0e2d9b7a11"
    principal = {"issuer": "https://idp.example.com/realms/corporate-directory", "subject": "m", "username": "mallory"}

    async def record() -> None:
        store = FileStore(tmp_path / "rec")
        rec = Recorder(store, Spool.beside(store, "w"), RecorderOptions(flush_interval=0.01))
        await rec.start()
        rec.emit(
            ExchangeStart(session=session, exchange="e", time=1.0, server="github-enterprise", principal=principal)
        )
        rec.emit(ExchangeEnd(session=session, exchange="e", index=1, time=2.0))
        await rec.close()

    asyncio.run(record())
    table = run("sessions", "list", "--dir", str(tmp_path / "rec"))
    row = next(line for line in table.splitlines() if session in line)
    assert "github-enterprise" in row and "mallory" in row and "hashes only" in row, table
    assert "verified" in table, table
