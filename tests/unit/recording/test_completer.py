"""The completer: a dead writer's spool is sealed (torn line dropped), shipped, and its open exchanges marked."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from recording_helpers import emit_exchanges

from extproc.errors import StoreError
from extproc.recording.audit import audit
from extproc.recording.chain import event_line
from extproc.recording.completer import Completer
from extproc.recording.digest import Digest, DigestLog
from extproc.recording.events import ExchangeEnd, ExchangeStart, McpRequest
from extproc.recording.manifest import Manifest, Signer, generate_keys, load_public_key
from extproc.recording.recorder import Recorder
from extproc.recording.replay import load_session
from extproc.recording.spool import Spool
from extproc.recording.spool_files import Append
from extproc.recording.store import Segment, put_each
from extproc.recording.store.file import FileStore
from extproc.recording.uploader import Uploader
from extproc.recording.writer import RecorderOptions

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
    await spool.write_behind([Append("s", "dead", 0, data + b'{"seq":4,"prev":"tor')])
    await spool.close(remove_if_empty=False)  # the lock goes, as when the kernel reaps a killed process


async def test_a_dead_writers_stream_is_sealed_shipped_and_its_open_exchange_marked(tmp_path: Path) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    signer = Signer.from_file(key)
    root = tmp_path / "rec"
    await _dead_writer(root / ".spool")
    store = FileStore(root)
    rec = Recorder(store, Spool.beside(store, "live"), RecorderOptions(flush_interval=0.01), signer=signer)
    await rec.start()
    stored: list[Segment] = []

    async def on_stored(segment: Segment) -> None:
        stored.append(segment)

    completer = Completer(root / ".spool", store, rec, signer, on_stored=on_stored)

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
    rec = Recorder(store, Spool.beside(store, "me"), RecorderOptions(flush_interval=0.01))
    await rec.start()

    assert await Completer(root / ".spool", store, rec, Signer(None)).run_once() == 0

    await rec.close()
    await live_other.close()


async def test_a_dead_writers_digest_chain_is_closed_on_its_behalf(tmp_path: Path) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    signer = Signer.from_file(key)
    root = tmp_path / "rec"
    store = FileStore(root)
    # The writer that will die: its digest log journals into its spool folder, as setup.py builds it.
    spool = Spool(root / ".spool", "dead")
    digests = DigestLog(store, "dead", signer, interval=3600, journal=spool.path)
    dead = Recorder(
        store,
        spool,
        RecorderOptions(flush_interval=0.01),
        signer=signer,
        uploader=Uploader(spool, store, on_stored=digests.stored),
    )
    await dead.start()
    await emit_exchanges(dead, "s1", 2)
    assert await dead.uploader.drain(5)
    assert await digests.flush()  # digest 0 lists s1's segments
    await emit_exchanges(dead, "s2", 2)
    assert await dead.uploader.drain(5)  # stored, journaled, in no digest yet: then the process is killed
    assert dead._task is not None
    dead._task.cancel()
    await dead.uploader.stop()
    await spool.close(remove_if_empty=False)

    live = Recorder(store, Spool.beside(store, "live"), RecorderOptions(flush_interval=0.01), signer=signer)
    await live.start()
    await Completer(root / ".spool", store, live, signer).run_once()
    await live.close()

    chain = store.read_digests()["dead"]
    closing = Digest.from_bytes(chain[1])
    assert sorted(chain) == [0, 1] and closing.final and closing.closed_by == "live"
    assert {s.session for s in closing.segments} == {"s2"}
    result = audit(store, load_public_key(pub))
    assert result.findings == [] and not any("dead: no closing digest" in n for n in result.notes)
    shutil.rmtree(root / "s2")
    assert "session 's2' missing (deleted)" in " ".join(audit(store, load_public_key(pub)).findings)


class _DownStore(FileStore):
    """A file store that refuses segments while ``down``."""

    down = True

    async def put_segment(self, segment: Segment) -> None:
        if self.down:
            raise StoreError("store down")
        await super().put_segment(segment)

    async def put_segments(self, segments: list[Segment]) -> tuple[int, Exception | None]:
        return await put_each(self, segments)  # one by one through put_segment, which refuses

    def put_segments_blocking(self, segments: list[Segment]) -> tuple[int, Exception | None]:
        """The uploader's path for a file store (read and stored in one thread hop), refusing the same way."""
        if self.down:
            return 0, StoreError("store down")
        return super().put_segments_blocking(segments)


async def test_stopping_ships_what_an_adopted_spool_still_holds(tmp_path: Path) -> None:
    # The store refuses during the adoption round; it is back when the processor stops. The dead writer's
    # segments must go to the store then, not wait in the folder for some later process.
    key, _ = generate_keys(tmp_path / "keys")
    signer = Signer.from_file(key)
    root = tmp_path / "rec"
    await _dead_writer(root / ".spool")
    store = _DownStore(root)
    rec = Recorder(store, Spool.beside(store, "live"), RecorderOptions(flush_interval=0.01), signer=signer)
    await rec.start()
    completer = Completer(root / ".spool", store, rec, signer)

    assert await completer.run_once(drain_within=0.05) == 1
    assert "dead" not in store.read_session("s")
    store.down = False
    await completer.stop()
    await rec.close()

    assert store.read_session("s")["dead"].data.count(b"\n") == 4
    assert not (root / ".spool" / "dead").exists()  # shipped and let go of
