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
