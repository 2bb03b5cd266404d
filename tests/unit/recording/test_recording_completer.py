"""The completer: a dead writer's spool is sealed (torn line dropped), shipped, and its open exchanges marked."""

from __future__ import annotations

import hashlib
from pathlib import Path

from extproc.recording.completer import Completer
from extproc.recording.events import ExchangeEnd, ExchangeStart, McpRequest
from extproc.recording.manifest import Manifest, Signer, generate_keys, load_public_key
from extproc.recording.recorder import Recorder, event_line
from extproc.recording.replay import load_session
from extproc.recording.spool import Append, Spool
from extproc.recording.store import Segment
from extproc.recording.store.file import FileStore

GENESIS = "0" * 64


def _lines(events: list) -> bytes:
    out, prev = [], GENESIS
    for seq, e in enumerate(events):
        line = event_line(seq, prev, e)
        prev = hashlib.sha256(line).hexdigest()
        out.append(line + b"\n")
    return b"".join(out)


async def _dead_writer(spool_root: Path) -> None:
    """What a processor killed mid-exchange leaves: an unsealed segment, the last line torn."""
    spool = Spool(spool_root, "dead")
    await spool.open()
    data = _lines(
        [
            ExchangeStart(session="s", exchange="done", time=1.0),
            ExchangeEnd(session="s", exchange="done", time=2.0),
            ExchangeStart(session="s", exchange="cut", time=3.0),
            McpRequest(session="s", exchange="cut", index=1, time=4.0),
        ]
    )
    await spool.write([Append("s", "dead", 0, data + b'{"seq":4,"prev":"tor')])
    await spool.close(remove_if_empty=False)  # the lock goes, as when the kernel reaps a killed process


async def test_a_dead_writers_stream_is_sealed_shipped_and_its_open_exchange_marked(tmp_path: Path) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    signer = Signer.from_file(key)
    root = tmp_path / "rec"
    await _dead_writer(root / ".spool")
    store = FileStore(root)
    rec = Recorder(store, writer_id="live", flush_interval=0.01, signer=signer)
    await rec.start()
    stored: list[Segment] = []
    completer = Completer(root / ".spool", store, rec, signer, on_stored=stored.append)

    assert await completer.run_once() == 1
    assert await completer.run_once() == 0  # adopted once
    await completer.stop()
    await rec.close()

    dead = store.read_session("s")["dead"]
    [manifest] = [Manifest.from_bytes(m) for m in dead.manifests]
    assert (manifest.final, manifest.first, manifest.last, manifest.sealed_by) == (True, 0, 3, "live")
    assert manifest.open == ["cut"]
    assert dead.data.count(b"\n") == 4 and b"tor" not in dead.data  # the torn line is dropped, the rest kept
    assert [s.writer for s in stored] == ["dead"]
    session = load_session(store, "s", load_public_key(pub))
    assert session.problems == [] and session.unfinished == []
    [marker] = [e for e in session.events if e["type"] == "exchange.incomplete"]
    assert (marker["exchange"], marker["writer"], marker["last_seq"]) == ("cut", "dead", 3)
    assert session.summary()["state"] == "incomplete"
    assert not (root / ".spool" / "dead").exists()  # shipped: nothing left behind


async def test_a_live_writers_folder_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "rec"
    live_other = Spool(root / ".spool", "other")
    await live_other.open()
    store = FileStore(root)
    rec = Recorder(store, writer_id="me", flush_interval=0.01)
    await rec.start()

    assert await Completer(root / ".spool", store, rec, Signer(None)).run_once() == 0

    await rec.close()
    await live_other.close()
