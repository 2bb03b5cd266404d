"""Fault and load suite: the real gateway under load with faults on top, loopback only, bounded in count and time.

    python bench/fault_suite.py SCENARIO [--scale small|full]     # one scenario
    python bench/fault_suite.py all [--scale small|full]          # every scenario (make faults)

Each scenario starts its own gateway (dev issuer, sample MCP servers, processor workers + Envoy via Stack), runs,
stops it, verifies every recorded session (chains, manifests, signatures, `store verify`) and that 0 events were
lost, prints its verdict and figures and writes them to bench/results/faults-SCENARIO-SCALE.json. Exit 1 when any
check failed. See bench/README.md ("Fault and load suite").
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import signal
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCENARIOS = {
    "soak": "bench.faults.soak",
    "sse-streams": "bench.faults.streams",
    "worker-death": "bench.faults.worker_death",
    "disk-full": "bench.faults.disk_full",
    "idp": "bench.faults.idp",
    "policy-reload": "bench.faults.policy_reload",
    "clock-skew": "bench.faults.clock_skew",
    "hostile": "bench.faults.hostile",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", choices=[*SCENARIOS, "all"])
    parser.add_argument("--scale", choices=["small", "full"], default="small")
    args = parser.parse_args(argv)
    # SIGTERM (a CI timeout, `timeout`) unwinds like Ctrl-C: every scenario's finally stops what it started and
    # unmounts what it mounted.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in names:
        t0 = time.monotonic()
        print(f"== {name} ({args.scale})", flush=True)
        try:
            out = importlib.import_module(SCENARIOS[name]).run(args.scale)
            doc = {"ok": out.ok, "failures": out.failures, "summary": out.summary, "figures": out.figures}
        except Exception:
            doc = {"ok": False, "failures": [traceback.format_exc()], "summary": "", "figures": {}}
        doc.update(scenario=name, scale=args.scale, wall_s=round(time.monotonic() - t0), machine=_machine())
        (results / f"faults-{name}-{args.scale}.json").write_text(json.dumps(doc, indent=2, default=str))
        print(f"{'PASS' if doc['ok'] else 'FAIL'} {name} ({args.scale}, {doc['wall_s']} s): {doc['summary']}")
        for f in doc["failures"]:
            print(f"  - {f}")
        if not doc["ok"]:
            failed.append(name)
    print(f"failed: {', '.join(failed)}" if failed else "all passed")
    return 1 if failed else 0


def _machine() -> dict[str, object]:
    import os

    load = os.getloadavg()
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "loadavg": [round(x, 1) for x in load]}


if __name__ == "__main__":
    sys.exit(main())
