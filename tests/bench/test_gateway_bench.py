"""The benchmark's own plumbing (bench/gateway_bench.py): what it writes lands where it is asked to."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_profile_goes_beside_out_in_a_folder_that_did_not_exist(tmp_path: Path) -> None:
    """--profile with --out outside bench/results: py-spy writes into a folder that must exist by then."""
    out = tmp_path / "elsewhere" / "gateway.json"
    code = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
        "from bench.gateway_bench import profile_path; print(profile_path(Path(sys.argv[2]), 'authed'))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(ROOT), str(out)], capture_output=True, text=True, check=True)
    path = Path(done.stdout.strip())
    assert path == tmp_path / "elsewhere" / "profile-authed.txt"
    assert path.parent.is_dir()
