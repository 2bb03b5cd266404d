"""What an approval request costs to write with and without per-caller sealing (``recording.encrypt_payloads``),
and what the background sweep of the approvals directory costs per ended entry (issue 21, item 3).

Alternating rounds of ``ApprovalStore.settle`` writing new requests, one store sealing the arguments with a
file-KEK keyring and one not, in one process, so both figures come from the same minutes of the same box.

    python bench/approvals_bench.py [--requests 200] [--rounds 6]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from extproc.authn.principal import Principal
from extproc.controls.approval_files import Binding, args_digest
from extproc.controls.approvals import ApprovalStore
from extproc.recording.manifest import Signer, generate_keys
from extproc.recording.shred import FileKek, FileKeyStore, Keyring

WHO = Principal("https://idp", "sub-alice", "alice")
ARGUMENTS = '{"repo": "x", "body": "' + "y" * 2000 + '"}'


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def write_requests(store: ApprovalStore, n: int, tag: str) -> float:
    """Seconds per new request (each call names another call: a new request file, its index entry, a read back)."""
    start = time.perf_counter()
    for i in range(n):
        b = Binding(WHO.issuer, WHO.subject, "demo", "", "t", args_digest({"i": i, "tag": tag}), "v1")
        store.settle(b, WHO, rule="r", approvers="a", ttl=600, count=1, arguments=ARGUMENTS)
    return (time.perf_counter() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="approvals-bench-"))
    key, _ = generate_keys(tmp / "keys")
    (tmp / "kek").write_bytes(b"k" * 32)
    signer, clock = Signer.from_file(key), Clock()
    stores = {
        "plain": ApprovalStore(tmp / "plain", signer, clock),
        "sealed": ApprovalStore(
            tmp / "sealed", signer, clock, keyring=Keyring(FileKeyStore(tmp / "ks"), FileKek(tmp / "kek"))
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in stores}
    for r in range(args.rounds):
        order = list(stores) if r % 2 == 0 else list(reversed(stores))
        for name in order:
            seconds[name].append(write_requests(stores[name], args.requests, f"{name}-{r}"))
    plain, sealed = (statistics.median(seconds[n]) for n in ("plain", "sealed"))
    print(f"new request: plain {plain * 1e3:.3f} ms, sealed {sealed * 1e3:.3f} ms, x{sealed / plain:.3f}")
    store = stores["plain"]
    n = len(list(store.directory.glob("*.request.json")))
    clock.now += 600 + store.retention + 1
    start = time.perf_counter()
    removed = store.sweep()
    took = time.perf_counter() - start
    print(f"sweep: {len(removed)} of {n} ended entries removed in {took * 1e3:.0f} ms ({took / n * 1e6:.0f} us each)")
    start = time.perf_counter()
    store.sweep()
    print(f"sweep of the emptied directory: {(time.perf_counter() - start) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
