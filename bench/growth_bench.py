"""What grows with the fleet: bytes stored per exchange, store requests per session, memory per open session.

The exchange phases driven in-process as in bench/exchange_bench.py (real ext_proc protobufs, a real Gateway with
the example policy, a real recorder chaining, spooling and sealing into a file store):

- bytes stored per exchange, JSON and SSE responses: the file store's bytes (segment data + manifests) over the
  exchanges, and the data as the S3 store would upload it with ``compression: zstd`` (each segment compressed);
- segments per session, for a session of 10 tool calls a few hundred ms apart: each segment is two S3 PUTs
  (data, manifest);
- memory per open session: RSS of this process (the processor without gRPC) before and after 10,000 sessions that
  each made one exchange and never ended.

    python bench/growth_bench.py [--exchanges 1000] [--sessions 10000] [--out bench/results/growth.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path
from typing import Any

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from exchange_bench import ALICE, CALL, RESULT, CachedAuth, _headers

from extproc.authn.session_binding import bind
from extproc.exchange import Exchange
from extproc.gateway import Gateway
from extproc.policy.loader import PolicyWatcher
from extproc.recording import jsonio
from extproc.recording.setup import build_runtime
from extproc.recording.store.codec import compress
from extproc.settings import parse

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "growth.json"


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Harness:
    """A Gateway over a file store in ``workdir``; ``exchange`` runs one whole exchange of ``session``."""

    def __init__(self, workdir: Path) -> None:
        self.rec = workdir / "rec"
        self.settings = parse(
            {
                "servers": [{"name": "demo", "upstream": "127.0.0.1:9"}, {"name": "github", "upstream": "127.0.0.1:9"}],
                "recording": {"directory": str(self.rec)},
                "auth": {"public_url": "https://gw.example", "issuers": [{"issuer": "https://idp.example"}]},
                "policy": {"directory": str(ROOT / "policies")},
            }
        )

    async def __aenter__(self) -> Harness:
        self.runtime = build_runtime(self.settings.recording)
        await self.runtime.start()
        self.policy = PolicyWatcher(ROOT / "policies", {"demo", "github"})
        self.gw = Gateway.build(self.settings, self.runtime.recorder, CachedAuth(), self.policy)  # type: ignore[arg-type]
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.runtime.close()
        await self.policy.close()

    async def exchange(self, session: str, sse: bool) -> None:
        bound = bind(session, ALICE, self.gw.options.session_key, "demo/")
        request = {
            ":method": "POST",
            ":path": "/demo/mcp",
            ":authority": "gw",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            "authorization": "Bearer " + "x" * 300,
            "mcp-session-id": bound,
        }
        for _ in range(200):  # a busy box: the worker sheds load (503) while its loop lags; try again shortly
            ex = Exchange(self.gw)
            await ex.on_request_headers(_headers(request))
            if not ex.refused:
                break
            await asyncio.sleep(0.05)
        else:
            raise RuntimeError("every attempt refused (the worker stays overloaded)")
        await ex.on_request_body(ep.HttpBody(body=json.dumps(CALL).encode(), end_of_stream=True))
        kind = "text/event-stream" if sse else "application/json"
        await ex.on_response_headers(_headers({":status": "200", "content-type": kind, "mcp-session-id": session}))
        body = f"event: message\ndata: {json.dumps(RESULT)}\n\n" if sse else json.dumps(RESULT)
        await ex.on_response_body(ep.HttpBody(body=body.encode(), end_of_stream=True))
        while not self.gw.sink.accepting:  # noqa: ASYNC110 (back-pressure: where the gateway would answer 503)
            await asyncio.sleep(0.001)

    def stored(self, session_part: str) -> dict[str, int]:
        """Bytes of the sessions whose folder name holds ``session_part``: data, manifests, zstd data, segments."""
        out = {"data": 0, "manifests": 0, "zstd": 0, "segments": 0}
        for folder in self.rec.iterdir():
            if session_part not in folder.name:
                continue
            for data_path in folder.glob("*.jsonl"):
                data = data_path.read_bytes()
                manifests = data_path.with_suffix(".manifests").read_bytes().splitlines()
                offset = 0
                for line in manifests:
                    size = int(jsonio.loads(line)["size"])
                    out["zstd"] += len(compress(data[offset : offset + size], "zstd"))
                    offset += size
                out["data"] += len(data)
                out["manifests"] += sum(len(m) + 1 for m in manifests)
                out["segments"] += len(manifests)
        return out


async def run(exchanges: int, sessions: int, workdir: Path) -> dict[str, Any]:
    result: dict[str, Any] = {}
    async with Harness(workdir / "bytes") as h:
        for kind, sse in (("json", False), ("sse", True)):
            for _ in range(exchanges):
                await h.exchange(f"bytes-{kind}", sse)
        await h.runtime.recorder.flushed(within=60)
    for kind in ("json", "sse"):
        s = h.stored(f"bytes-{kind}")
        result[f"bytes_per_exchange_{kind}"] = {
            "stored": round((s["data"] + s["manifests"]) / exchanges),
            "data": round(s["data"] / exchanges),
            "data_zstd": round(s["zstd"] / exchanges),
            "manifests": round(s["manifests"] / exchanges),
        }
    async with Harness(workdir / "segments") as h:
        for _ in range(10):  # an agent's session: a tool call every 300 ms
            await h.exchange("paced", sse=True)
            await asyncio.sleep(0.3)
        await h.runtime.recorder.flushed(within=60)
    segments = h.stored("paced")["segments"]
    result["session_of_10_calls_300ms_apart"] = {"segments": segments, "s3_puts": 2 * segments}
    async with Harness(workdir / "open") as h:
        await h.exchange("warm", sse=True)
        await h.runtime.recorder.flushed(within=60)
        before = _rss_kib()
        for i in range(sessions):
            await h.exchange(f"open-{i:06d}", sse=bool(i % 2))
        await h.runtime.recorder.flushed(within=120)
        after = _rss_kib()
    result["open_sessions"] = {
        "sessions": sessions,
        "rss_before_mib": round(before / 1024, 1),
        "rss_after_mib": round(after / 1024, 1),
        "kib_per_open_session": round((after - before) / sessions, 2),
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--exchanges", type=int, default=1000, help="exchanges of each kind for the bytes figures")
    parser.add_argument("--sessions", type=int, default=10_000, help="open sessions for the memory figure")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = asyncio.run(run(args.exchanges, args.sessions, Path(tmp)))
    for kind in ("json", "sse"):
        b = result[f"bytes_per_exchange_{kind}"]
        print(
            f"{kind.upper()} exchange: {b['stored']} bytes stored ({b['data']} data + {b['manifests']} manifests); "
            f"data with zstd: {b['data_zstd']} bytes"
        )
    p = result["session_of_10_calls_300ms_apart"]
    print(f"a session of 10 calls 300 ms apart: {p['segments']} segments = {p['s3_puts']} S3 PUTs")
    o = result["open_sessions"]
    print(
        f"{o['sessions']:,} open sessions: RSS {o['rss_before_mib']} -> {o['rss_after_mib']} MiB, "
        f"{o['kib_per_open_session']} KiB per open session"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
