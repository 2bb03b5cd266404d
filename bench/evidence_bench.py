"""The transparency log's cost: a checkpoint over 1M leaves, `prove` for one session over 1M leaves, and the
processor's CPU per exchange with the log on and off.

    python bench/evidence_bench.py [--leaves 1000000] [--exchanges 3000] [--rounds 3]

1. **Append and checkpoint.** ``--leaves`` synthetic segment entries (as long as real ones) are appended through
   ``TransparencyLog.publish`` in batches of 10,000 (one checkpoint each, tiles to a file store's ``.tlog``).
   Printed: the append rate, the time of one checkpoint at the full size (1,000 new leaves hashed, tiles, signed
   note written), and the time a witness needs to recompute the root of the whole tree from the tiles.
2. **Prove.** A real session (a recorder with signed manifests, 20 exchanges) is logged in the middle of the tree;
   ``prove_session`` reads its manifests from the store, finds their leaves, computes and checks every inclusion
   proof from the tiles against the checkpoint: what `mcp-extproc evidence prove` does, without process start-up.
3. **CPU per exchange.** ``bench/exchange_bench.py`` (real Exchange phases, real recorder, file store), with a
   signing key, alternately without and with ``recording.transparency_log`` (a checkpoint every 0.5 s, so the
   log works during the measurement), ``--rounds`` times each; the medians are compared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "support")]

from extproc.evidence import merkle  # noqa: E402
from extproc.evidence.proofs import prove_session  # noqa: E402
from extproc.evidence.tiles import FileBlobs, TileHashes  # noqa: E402
from extproc.evidence.tlog import TransparencyLog  # noqa: E402
from extproc.recording import jsonio  # noqa: E402

ORIGIN = "bench.example/log"
BATCH = 10_000


def synthetic(i: int) -> tuple[bytes, tuple[str, str, int] | None]:
    doc = {"kind": "segment", "session": f"u_demo__{i:032x}", "stream": "host-1234-abcdef01", "segment": i % 50}
    return jsonio.dumps_sorted({**doc, "manifest": f"{i:064x}"}), None


async def _record_session(root: Path, tlog: TransparencyLog, key: Path, captured: list[Any]) -> str:
    from recording_helpers import emit_exchanges

    from extproc.recording.manifest import Signer
    from extproc.recording.recorder import Recorder
    from extproc.recording.spool import Spool
    from extproc.recording.store.file import FileStore
    from extproc.recording.uploader import Uploader
    from extproc.recording.writer import RecorderOptions

    store, signer = FileStore(root), Signer.from_file(key)
    spool = Spool(root / ".spool", "bench-writer")

    async def stored(segment: Any) -> None:
        captured.append(segment)
        await tlog.segment_stored(segment)

    uploader = Uploader(spool, store, on_stored=stored)
    rec = Recorder(store, spool, RecorderOptions(flush_interval=0.01), signer=signer, uploader=uploader)
    await rec.start()
    await emit_exchanges(rec, "bench-session", 20)
    await rec.close()
    return "bench-session"


def log_bench(leaves: int, workdir: Path) -> dict[str, Any]:
    from extproc.recording.manifest import generate_keys, load_public_key
    from extproc.recording.store.file import FileStore

    key, pub = generate_keys(workdir / "keys")
    from extproc.evidence.tlog import load_note_signer

    blobs = FileBlobs(workdir / "rec" / ".tlog")
    tlog = TransparencyLog(blobs, ORIGIN, "w", load_note_signer(ORIGIN, key))
    half = leaves // 2
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    for start in range(0, half, BATCH):
        tlog.publish([synthetic(i) for i in range(start, min(half, start + BATCH))])
    captured: list[Any] = []
    session = asyncio.run(_record_session(workdir / "rec", tlog, key, captured))
    tlog.publish(tlog._queued)  # the session's segments, in the middle of the tree
    tlog._queued = []
    for start in range(half, leaves - 1000, BATCH):
        tlog.publish([synthetic(i) for i in range(start, min(leaves - 1000, start + BATCH))])
    append_s, append_cpu = time.perf_counter() - t0, time.process_time() - cpu0
    t1 = time.perf_counter()
    tlog.publish([synthetic(i) for i in range(leaves - 1000, leaves)])  # one checkpoint at ~1M
    checkpoint_ms = (time.perf_counter() - t1) * 1000
    size = tlog.size
    t2 = time.perf_counter()
    root = merkle.subtree(TileHashes(blobs, "w", size), 0, size)
    witness_ms = (time.perf_counter() - t2) * 1000
    assert tlog.published is not None and root == tlog._tree.root()
    public = load_public_key(pub)
    store = FileStore(workdir / "rec")
    times = []
    for _ in range(5):
        t3 = time.perf_counter()
        proof = prove_session(store, blobs, session, public)
        times.append((time.perf_counter() - t3) * 1000)
        assert proof.ok, [s.problem for s in proof.segments]
    # The log's whole cost per stored segment, as the processor pays it: ``segment_stored`` on the event loop (parse
    # the manifest, build the entry) and the share of a checkpoint (hash, tiles, where index), with real manifests.
    per = TransparencyLog(FileBlobs(workdir / "per-leaf"), ORIGIN, "w", load_note_signer(ORIGIN, key))

    async def feed() -> None:
        for _ in range(500):
            for seg in captured:
                await per.segment_stored(seg)
            if len(per._queued) >= 2000:
                per.publish(per._queued)
                per._queued = []
        per.publish(per._queued)

    cpu1 = time.process_time()
    asyncio.run(feed())
    per_leaf_us = (time.process_time() - cpu1) * 1e6 / (500 * len(captured))
    return {
        "cpu_us_per_logged_segment": round(per_leaf_us, 1),
        "leaves": size,
        "append_leaves_per_s": round(size / append_s),
        "append_cpu_us_per_leaf": round(append_cpu * 1e6 / size, 2),
        "checkpoint_ms_at_size": round(checkpoint_ms, 1),
        "witness_root_from_tiles_ms": round(witness_ms, 1),
        "prove_session_segments": len(proof.segments),
        "prove_session_ms_median_of_5": round(statistics.median(times), 1),
        "prove_session_ms_first": round(times[0], 1),
    }


def cpu_bench(exchanges: int, rounds: int, workdir: Path, interval: float = 0.5) -> dict[str, Any]:
    import exchange_bench

    from extproc.recording.manifest import generate_keys

    key, _ = generate_keys(workdir / "cpu-keys")
    parse = exchange_bench.parse

    def with_log(on: bool) -> Any:
        def patched(doc: dict[str, Any]) -> Any:
            rec = {**doc["recording"], "signing_key": str(key)}
            if on:
                rec["transparency_log"] = {"origin": ORIGIN, "checkpoint_interval_s": interval}
            return parse({**doc, "recording": rec})

        return patched

    results: dict[str, list[float]] = {"off": [], "on": []}
    for r in range(rounds):
        for mode in ("off", "on") if r % 2 == 0 else ("on", "off"):  # ABBA: neither side always runs second
            exchange_bench.parse = with_log(mode == "on")
            folder = workdir / f"cpu-{mode}-{r}"
            folder.mkdir()
            out = asyncio.run(exchange_bench.run(exchanges, folder, False))
            results[mode].append(out["cpu_ms_per_exchange"])
            if mode == "on":
                assert (folder / "rec" / ".tlog").is_dir()
    exchange_bench.parse = parse
    off, on = statistics.median(results["off"]), statistics.median(results["on"])
    return {
        "exchanges_per_run": exchanges,
        "cpu_ms_per_exchange_off": [round(x, 4) for x in results["off"]],
        "cpu_ms_per_exchange_on": [round(x, 4) for x in results["on"]],
        "median_off": round(off, 4),
        "median_on": round(on, 4),
        "on_over_off_percent": round((on / off - 1) * 100, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--leaves", type=int, default=1_000_000)
    parser.add_argument("--exchanges", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument(
        "--checkpoint-interval",
        type=float,
        default=0.5,
        help="seconds (0.5: several signed checkpoints per run; 60 by default in a gateway)",
    )
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "bench"))
    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = {"log": log_bench(args.leaves, Path(tmp))}
        print(json.dumps(result["log"], indent=2), flush=True)
        if not args.skip_cpu:
            result["cpu"] = cpu_bench(args.exchanges, args.rounds, Path(tmp), args.checkpoint_interval)
            print(json.dumps(result["cpu"], indent=2))
    results = ROOT / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    (results / "evidence.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
