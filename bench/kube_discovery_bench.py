"""Kubernetes discovery with many Services: API-server requests per pod, one watch per worker against one per pod.

Run: python bench/kube_discovery_bench.py [--services 1000] [--workers 4] [--window 10]

The loopback API server of the tests (tests/support/kube_api.py, genuine API JSON) holds N labelled Services,
each with its EndpointSlice. Two layouts of one pod with W workers run for ``--window`` seconds each, with the
watch timeout shortened to 2 s so watch renewals show within the window:
- per worker: every worker runs its own watch (as before issue 27);
- per pod: the launcher watches, the workers read its snapshot file.
It prints the requests the API server saw (lists, watches), the time to the first complete set in every worker,
the size of one full list, and the requests per hour at the default watch timeout (300 s).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "support"))

from kube_api import TOKEN, FakeKubeApi

from extproc.kube.config import KubernetesDiscovery
from extproc.kube.discovery import KubeDiscovery
from extproc.kube.snapshot import SharedDiscovery, write_snapshot
from extproc.launcher import wait_until


def _counts(api: FakeKubeApi, since: int) -> tuple[int, int]:
    reqs = api.requests[since:]
    watches = sum(1 for r in reqs if "watch=true" in r.lower())
    return len(reqs) - watches, watches


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--services", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--window", type=float, default=10.0)
    args = ap.parse_args()
    n, w = args.services, args.workers
    api = FakeKubeApi().start()
    try:
        for i in range(n):
            api.put_service(f"team-{i % 10}", f"svc-{i:04d}", 8000, {"mcp-extproc.io/server": f"s{i:04d}"})
        headers = {"authorization": f"Bearer {TOKEN}"}
        sizes = [
            len(httpx.get(f"{api.url}{p}?labelSelector=mcp-extproc.io%2Fserver", headers=headers, timeout=60).content)
            for p in ("/api/v1/services", "/apis/discovery.k8s.io/v1/endpointslices")
        ]
        print(
            f"{n} Services + {n} EndpointSlices; one full list: {sizes[0] / 1024:.0f} KiB + {sizes[1] / 1024:.0f} KiB"
        )
        with tempfile.TemporaryDirectory() as tmp:
            cfg = KubernetesDiscovery(
                kubeconfig=api.kubeconfig(Path(tmp) / "kubeconfig"), watch_timeout_s=2, retry_s=0.5,
                request_timeout_s=30,
            )  # fmt: skip
            for layout in ("per worker", "per pod"):
                start, t0 = len(api.requests), time.perf_counter()
                snapshot = Path(tmp) / "discovery.json"
                if layout == "per worker":
                    parts: list[KubeDiscovery | SharedDiscovery] = [KubeDiscovery(cfg, set()) for _ in range(w)]
                    views = parts
                else:
                    launcher = KubeDiscovery(cfg, set(), on_change=lambda e, f=snapshot: write_snapshot(f, e))
                    views = [SharedDiscovery(snapshot, set(), poll_s=0.2) for _ in range(w)]
                    parts = [launcher, *views]
                for p in parts:
                    p.start()
                wait_until(lambda vs=views: all(len(v.routes) == n for v in vs), 120, "every worker's full set", 0.01)
                synced = time.perf_counter() - t0
                time.sleep(max(0.0, args.window - synced))  # a fixed observation window, not a wait for a condition
                lists, watches = _counts(api, start)
                for p in parts:
                    p.close()
                streams = 2 * (w if layout == "per worker" else 1)
                print(
                    f"{layout:10s}: {w} workers, all {n} servers in every worker after {synced:.2f} s; "
                    f"API requests in {args.window:.0f} s: {lists} lists, {watches} watches; "
                    f"open watch streams {streams}; at watch_timeout_s 300: {streams * 12} watch requests/hour"
                )
    finally:
        api.stop()


if __name__ == "__main__":
    main()
