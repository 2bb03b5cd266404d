"""The official MCP conformance suite, directly and through the gateway (anonymous, then auth + allow-all policy).

Runs tests/conformance/run.py: every scenario must give the same result both ways (or be a known, explained
difference), every request through Envoy must be recorded or be a counted pre-admission refusal, and every
recorded session must verify. Installs the pinned suite and Node into .conformance/ on first use (npm).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).with_name("run.py")


def test_conformance_suite_same_direct_and_through_the_gateway(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN), "--work", str(tmp_path)], capture_output=True, text=True, timeout=1200
    )
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert "unexpected differences: 0" in proc.stdout
