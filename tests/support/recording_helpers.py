"""Shared by the recording tests: the real CLI in a subprocess, and a small signed recording."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import zygote

from extproc.recording.digest import DigestLog
from extproc.recording.events import ExchangeEnd, ExchangeStart, McpRequest
from extproc.recording.manifest import Signer
from extproc.recording.recorder import Recorder
from extproc.recording.spool import Spool
from extproc.recording.store import Store
from extproc.recording.store.file import FileStore
from extproc.recording.uploader import Uploader
from extproc.recording.writer import RecorderOptions


def exchange_events(session: str, n: int) -> list[ExchangeStart | McpRequest | ExchangeEnd]:
    """The three events of one small exchange ``e<n>`` of ``session``: start, request, end."""
    ex = f"e{n}"
    return [
        ExchangeStart(session=session, exchange=ex, index=0, method="POST"),
        McpRequest(session=session, exchange=ex, index=1, messages=[{"id": n}], size=10),
        ExchangeEnd(session=session, exchange=ex, index=2),
    ]


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m extproc *args`` (forked from a pre-imported process: tests/support/zygote.py)."""
    env = {**os.environ, "COLUMNS": "250"}  # one problem per line, unwrapped
    return zygote.run("extproc", list(args), env=env, timeout=60)


async def emit_exchanges(rec: Recorder, session: str, exchanges: int, t: float = 1000.0) -> None:
    """``exchanges`` exchanges of one session: one segment each (a segment ends at every exchange end)."""
    for x in range(exchanges):
        ex = f"{session}-ex{x}"
        rec.emit(ExchangeStart(session=session, exchange=ex, time=t, method="POST", server="demo"))
        rec.emit(McpRequest(session=session, exchange=ex, index=1, time=t + 0.1, messages=[{"id": x, "n": x}]))
        rec.emit(ExchangeEnd(session=session, exchange=ex, index=2, time=t + 0.2))
        await rec.flushed()
        t += 1


async def record(root: Path, key: Path, session: str, exchanges: int = 4, store: Store | None = None) -> None:
    store = store or FileStore(root)
    rec = Recorder(
        store, Spool(root / ".spool", "w"), RecorderOptions(flush_interval=0.01), signer=Signer.from_file(key)
    )
    await rec.start()
    await emit_exchanges(rec, session, exchanges)
    await rec.close()


async def record_with_digests(
    store: Store, spool: Path, key: Path | None, sessions: list[str], writer: str = "w", exchanges: int = 4
) -> DigestLog:
    """As the processor records (``recording/setup.py``): spool, uploader and digest log injected into the
    recorder; one digest period per session, and the closing digest at the end."""
    signer = Signer.from_file(key)
    digests = DigestLog(store, writer, signer, interval=3600)
    spool_ = Spool(spool, writer)
    uploader = Uploader(spool_, store, on_stored=digests.stored)
    rec = Recorder(store, spool_, RecorderOptions(flush_interval=0.01), signer=signer, uploader=uploader)
    await rec.start()
    digests.start()
    for session in sessions:
        await emit_exchanges(rec, session, exchanges)
        await rec.flushed()
        assert await rec.uploader.drain(5.0)  # what is sealed reaches the store before the period ends
        assert await digests.flush()
    await rec.close()
    assert await digests.close()
    return digests
