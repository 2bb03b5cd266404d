"""The benchmark's own plumbing (bench/gateway_bench.py): what it writes lands where it is asked to."""

from __future__ import annotations

import json
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


def test_a_variant_reaches_the_processor_processes_only_and_applies_its_knobs(tmp_path: Path) -> None:
    """--variants: set_variant puts the knobs in the environment of processor processes (not this one), and a
    process started with it runs them (the GIL switch interval, the stream loop as it was before)."""
    code = (
        "import sys, os, json; sys.path.insert(0, sys.argv[1]);"
        "from bench import gateway_bench as gb;"
        "gb.set_variant('switch=0.001,stream=iter,rec:seal_interval_ms=5000,unix');"
        "first = (dict(gb.PROCESSOR_ENV), dict(gb.RECORDING_OPTIONS), gb.UNIX_SOCKET,"
        "         'MCP_BENCH_VARIANT' in os.environ);"
        "gb.set_variant('base');"
        "print(json.dumps([first, [gb.PROCESSOR_ENV, gb.RECORDING_OPTIONS, gb.UNIX_SOCKET]]))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(ROOT)], capture_output=True, text=True, check=True)
    (env, recording, unix, leaked), after = json.loads(done.stdout)
    assert env["MCP_BENCH_VARIANT"] == "switch=0.001,stream=iter,rec:seal_interval_ms=5000,unix"
    assert env["PYTHONPATH"].split(":")[0] == str(ROOT / "bench" / "variants")
    assert recording == {"seal_interval_ms": 5000} and unix and not leaked
    assert after == [{}, {}, False]  # base: the code as it is
    probe = (
        "import sys, inspect; from extproc import server;"
        "print(sys.getswitchinterval(), inspect.isasyncgenfunction(server.Processor.Process))"
    )
    ran = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, env={**env, "PATH": "/usr/bin"}
    )
    assert ran.stdout.split() == ["0.001", "True"]
