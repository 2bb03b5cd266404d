"""The layering holds by test: the import contracts in pyproject.toml ([tool.importlinter]) are all kept."""

from __future__ import annotations

import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import grimp
import pytest

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


def _module_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("extproc")
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def test_the_module_import_graph_has_no_cycle() -> None:
    """Across packages too (the contracts above hold cycles only between siblings): a topological order exists."""
    order = list(TopologicalSorter(_module_graph()).static_order())

    assert "extproc.cli" in order and len(order) > 100


def test_a_cycle_would_be_found() -> None:
    """Guards the test above: the same check on the graph plus one back edge (envoy.fields -> cli) raises."""
    graph = _module_graph()
    graph["extproc.envoy.fields"].add("extproc.cli")

    with pytest.raises(CycleError):
        list(TopologicalSorter(graph).static_order())
