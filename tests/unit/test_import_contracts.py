"""The layering holds by test: the import contracts in pyproject.toml ([tool.importlinter]) are all kept."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint_imports(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_every_import_contract_is_kept() -> None:
    proc = _lint_imports()

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert " 0 broken." in proc.stdout
    assert "No import cycle between the modules of a package KEPT" in proc.stdout


def test_a_broken_contract_fails_the_check(tmp_path: Path) -> None:
    """Guards the test above: lint-imports really reads the code (extproc.envoy does import extproc.settings)."""
    config = tmp_path / "contracts.toml"
    config.write_text(
        '[tool.importlinter]\nroot_package = "extproc"\n\n'
        '[[tool.importlinter.contracts]]\nname = "envoy without settings"\ntype = "forbidden"\n'
        'source_modules = ["extproc.envoy"]\nforbidden_modules = ["extproc.settings"]\n'
    )

    proc = _lint_imports(str(config))

    assert proc.returncode != 0
    assert "extproc.envoy.bootstrap -> extproc.settings" in proc.stdout
