"""The transparency log as the processor runs it: every segment of a session proven from the tiles and a checkpoint,
consistency between checkpoints, and a rewritten history re-signed with the same key caught by a witness."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from evidence_helpers import logged_entries, stored_entries
from recording_helpers import emit_exchanges

from extproc.evidence.config import TransparencyLogConfig
from extproc.evidence.note import NoteSigner, open_checkpoint
from extproc.evidence.proofs import (
    audit_log,
    check_checkpoint,
    log_keys,
    prove_consistency,
    prove_session,
    verifier_for,
    verify_bundle,
)
from extproc.evidence.tiles import FileBlobs
from extproc.evidence.tlog import JOURNAL, TransparencyLog, digest_entry, segment_entry
from extproc.launcher import wait_until
from extproc.recording import jsonio
from extproc.recording.config import Recording
from extproc.recording.manifest import Manifest, generate_keys, load_public_key
from extproc.recording.setup import RecordingRuntime, build_runtime
from extproc.recording.store import Segment
from extproc.recording.store.file import FileStore
from extproc.tasks import cancel

ORIGIN = "gw.example/mcp-log"


async def record(root: Path, sessions: dict[str, int]) -> Ed25519PublicKey:
    key, pub = generate_keys(root / "keys")
    rec = Recording(
        directory=root / "rec",
        signing_key=key,
        flush_interval_ms=10,
        transparency_log=TransparencyLogConfig(origin=ORIGIN, checkpoint_interval_s=3600),
    )
    runtime = build_runtime(rec)
    await runtime.start()
    for session, n in sessions.items():
        await emit_exchanges(runtime.recorder, session, n)
    await runtime.close()
    return load_public_key(pub)


async def test_every_segment_of_a_session_is_proven_from_the_tiles_and_the_checkpoint(tmp_path: Path) -> None:
    public = await record(tmp_path, {"s-one": 3, "s-two": 5})
    store, blobs = FileStore(tmp_path / "rec"), FileBlobs(tmp_path / "rec" / ".tlog")

    [log] = log_keys(blobs)
    checked = check_checkpoint(blobs, log, public)
    assert checked.problems == [] and checked.checkpoint is not None
    assert checked.checkpoint.origin == f"{ORIGIN}/{log}"
    # tlog-checkpoint: the key name in the signature line matches the origin line
    assert checked.note.decode().endswith(f"\n\n\u2014 {ORIGIN}/{log} " + checked.note.decode().rsplit(" ", 1)[1])
    proof = prove_session(store, blobs, "s-two", public)
    assert proof.ok, [s.problem for s in proof.segments]
    assert len(proof.segments) == sum(len(d.manifests) for d in store.read_session("s-two").values()) >= 5
    assert verify_bundle(proof.bundle(), public) == []
    # The closing digest is a leaf too: segments (both sessions) + digests.
    assert checked.checkpoint.size > len(proof.segments) + len(prove_session(store, blobs, "s-one", public).segments)


async def test_an_edited_manifest_or_tile_fails_the_proof(tmp_path: Path) -> None:
    public = await record(tmp_path, {"s": 2})
    store, blobs = FileStore(tmp_path / "rec"), FileBlobs(tmp_path / "rec" / ".tlog")
    [manifests] = list((tmp_path / "rec" / "s").glob("*.manifests"))
    manifests.write_bytes(manifests.read_bytes().replace(b'"count":3', b'"count":4', 1))
    assert not prove_session(store, blobs, "s", public).ok

    public = await record(tmp_path / "b", {"s": 2})
    store, blobs = FileStore(tmp_path / "b/rec"), FileBlobs(tmp_path / "b/rec/.tlog")
    [log] = log_keys(blobs)
    [tile] = list((tmp_path / "b/rec/.tlog" / log / "tile/0").glob("000.p/*"))
    tile.write_bytes(bytes(32) + tile.read_bytes()[32:])
    assert not prove_session(store, blobs, "s", public).ok
    assert check_checkpoint(blobs, log, public).problems


def test_a_bundle_checked_with_another_key_or_edited_fails(tmp_path: Path) -> None:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    tlog = TransparencyLog(FileBlobs(tmp_path), ORIGIN, "w", signer)
    tlog.publish([(b'{"a":1}', None)])
    note = (tmp_path / "w/checkpoint").read_bytes()
    cp = open_checkpoint(note, verifier_for(note, signer.private.public_key()))
    bundle = {
        "checkpoints": {"w": note.decode()},
        "segments": [{"stream": "x", "segment": 0, "log": "w", "index": 0, "size": 1, "entry": '{"a":1}', "proof": []}],
    }
    assert cp.size == 1 and verify_bundle(bundle, signer.private.public_key()) == []
    assert verify_bundle(bundle, Ed25519PrivateKey.generate().public_key())
    bundle["segments"][0]["entry"] = '{"a":2}'  # type: ignore[index]
    assert verify_bundle(bundle, signer.private.public_key())


@pytest.mark.parametrize("session", ["plain-id", "a session/with ../odd chars", "x" * 300])
async def test_the_entry_logged_for_a_stored_segment_is_rebuilt_from_its_stored_manifest(session: str) -> None:
    manifest = Manifest(session, "host-1-ab", 2, 5, 9, 5, 400, "a" * 64, "b" * 64, "c" * 64, created=1.5)
    raw = manifest.to_bytes()
    tlog = TransparencyLog(FileBlobs("/nonexistent"), ORIGIN, "w", NoteSigner(ORIGIN, Ed25519PrivateKey.generate()))
    await tlog.segment_stored(Segment(session, "host-1-ab", 2, b"", raw, 1.5))
    [(entry, place)] = tlog._queued
    assert entry == segment_entry(raw) == jsonio.dumps_sorted(jsonio.loads(entry))
    assert place == (session, "host-1-ab", 2)


def entries(first: int, last: int, tag: str = "") -> list[tuple[bytes, tuple[str, str, int] | None]]:
    return [(f'{{"n":{i}{tag}}}'.encode(), None) for i in range(first, last)]


@pytest.mark.parametrize("rewrite_from", [0, 5, 9])
def test_a_history_rewritten_and_resigned_with_the_same_key_fails_consistency_with_a_witness(
    tmp_path: Path, rewrite_from: int
) -> None:
    key = Ed25519PrivateKey.generate()
    blobs = FileBlobs(tmp_path)
    honest = TransparencyLog(blobs, ORIGIN, "w", NoteSigner(ORIGIN, key))
    honest.publish(entries(0, 10))
    witness = (tmp_path / "w/checkpoint").read_bytes()  # what an outside witness kept
    verifier = verifier_for(witness, key.public_key())
    old = open_checkpoint(witness, verifier)

    honest.publish(entries(10, 300))
    new = open_checkpoint((tmp_path / "w/checkpoint").read_bytes(), verifier)
    assert prove_consistency(blobs, "w", old, new).ok

    # The key holder rewrites the log from leaf `rewrite_from` and re-signs it, same origin, same key.
    forged = TransparencyLog(blobs, ORIGIN, "w", NoteSigner(ORIGIN, key))
    forged.publish(entries(0, rewrite_from) + entries(rewrite_from, 300, tag=',"x":1'))
    rewritten = open_checkpoint((tmp_path / "w/checkpoint").read_bytes(), verifier)  # signed: looks fine alone
    assert rewritten.size == 300 and check_checkpoint(blobs, "w", key.public_key()).problems == []
    assert not prove_consistency(blobs, "w", old, rewritten).ok


def test_a_log_that_shrank_is_inconsistent(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    blobs = FileBlobs(tmp_path)
    TransparencyLog(blobs, ORIGIN, "w", NoteSigner(ORIGIN, key)).publish(entries(0, 10))
    verifier = verifier_for((tmp_path / "w/checkpoint").read_bytes(), key.public_key())
    old = open_checkpoint((tmp_path / "w/checkpoint").read_bytes(), verifier)
    TransparencyLog(blobs, ORIGIN, "w", NoteSigner(ORIGIN, key)).publish(entries(0, 4))
    new = open_checkpoint((tmp_path / "w/checkpoint").read_bytes(), verifier)
    assert not prove_consistency(blobs, "w", old, new).ok


class Refusing(FileBlobs):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.refuse = True

    def put(self, path: str, data: bytes) -> None:
        if self.refuse:
            raise OSError(28, "No space left on device")
        super().put(path, data)

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        if self.refuse:
            raise OSError(28, "No space left on device")
        super().put_many(items)


def test_a_refused_write_is_retried_first_next_round_and_nothing_is_lost(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    blobs = Refusing(tmp_path)
    tlog = TransparencyLog(blobs, ORIGIN, "w", NoteSigner(ORIGIN, key))
    assert not tlog.publish(entries(0, 300))
    assert not (tmp_path / "w").exists()
    blobs.refuse = False
    assert tlog.publish(entries(300, 310))
    assert check_checkpoint(blobs, "w", key.public_key()).checkpoint.size == 310  # type: ignore[union-attr]
    assert check_checkpoint(blobs, "w", key.public_key()).problems == []


@pytest.mark.parametrize(
    "bundle",
    [
        pytest.param({}, id="empty"),
        pytest.param({"checkpoints": [], "segments": {}}, id="wrong-types"),
        pytest.param({"checkpoints": {"w": "not a note"}, "segments": [{"log": "w"}]}, id="bad-note"),
        pytest.param({"segments": ["x"]}, id="segment-not-an-object"),
    ],
)
def test_a_malformed_bundle_is_a_finding_not_a_crash(bundle: dict[str, object]) -> None:
    assert verify_bundle(bundle, Ed25519PrivateKey.generate().public_key())


def test_a_malformed_segment_in_a_signed_bundle_is_a_finding(tmp_path: Path) -> None:
    signer = NoteSigner(ORIGIN, Ed25519PrivateKey.generate())
    TransparencyLog(FileBlobs(tmp_path), ORIGIN, "w", signer).publish([(b"x", None)])
    note = (tmp_path / "w/checkpoint").read_text()
    seg = {"log": "w", "entry": "x", "index": "zero", "size": 1, "proof": []}
    problems = verify_bundle({"checkpoints": {"w": note}, "segments": [seg]}, signer.private.public_key())
    assert problems and "malformed" in problems[0]


async def test_two_writers_keep_two_logs_and_a_session_across_both_is_proven(tmp_path: Path) -> None:
    """Workers never share a log: each appends its own, with no lock; a session they both served is proven from
    both."""
    key, pub = generate_keys(tmp_path / "keys")
    rec = Recording(
        directory=tmp_path / "rec",
        signing_key=key,
        flush_interval_ms=10,
        transparency_log=TransparencyLogConfig(origin=ORIGIN, checkpoint_interval_s=3600),
    )
    first, second = build_runtime(rec), build_runtime(rec)
    await first.start()
    await second.start()
    await emit_exchanges(first.recorder, "shared", 2)
    await emit_exchanges(second.recorder, "shared", 2, t=2000.0)
    await first.close()
    await second.close()
    blobs = FileBlobs(tmp_path / "rec" / ".tlog")
    public = load_public_key(pub)
    assert len(log_keys(blobs)) == 2
    proof = prove_session(FileStore(tmp_path / "rec"), blobs, "shared", public)
    assert proof.ok and {s.log for s in proof.segments} == set(log_keys(blobs))


async def test_a_full_audit_names_a_deleted_session_an_edited_manifest_and_an_edited_entry(tmp_path: Path) -> None:
    public = await record(tmp_path, {"kept": 2, "gone": 2, "edited": 1})
    store, blobs = FileStore(tmp_path / "rec"), FileBlobs(tmp_path / "rec" / ".tlog")
    [log] = log_keys(blobs)
    assert audit_log(blobs, log, public, store) == []

    shutil.rmtree(tmp_path / "rec" / "gone")
    [manifests] = list((tmp_path / "rec" / "edited").glob("*.manifests"))
    manifests.write_bytes(manifests.read_bytes().replace(b'"count":3', b'"count":4', 1))
    problems = audit_log(blobs, log, public, store)
    assert problems == [
        "session 'edited': segment 0 of stream " + log + ": manifest edited since logged",
        "session 'gone': 3 logged segments, none stored (deleted)",
    ]

    [bundle] = list((tmp_path / "rec" / ".tlog" / log / "tile" / "entries").glob("000.p/*"))
    bundle.write_bytes(bundle.read_bytes().replace(b'"segment":1,', b'"segment":7,', 1))
    assert any("does not hash to its leaf" in p for p in audit_log(blobs, log, public))


def test_a_full_audit_finds_an_earlier_checkpoint_the_latest_does_not_extend(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    blobs = FileBlobs(tmp_path)
    TransparencyLog(blobs, ORIGIN, "w", NoteSigner(ORIGIN, key)).publish(entries(0, 10))
    assert audit_log(blobs, "w", key.public_key()) == []
    TransparencyLog(blobs, ORIGIN, "w", NoteSigner(ORIGIN, key)).publish(entries(0, 20, tag=',"x":1'))
    assert audit_log(blobs, "w", key.public_key()) == [
        "checkpoint of size 10 is not consistent with the latest (log rewritten)"
    ]


async def test_a_checkpoint_that_fails_unexpectedly_does_not_end_the_checkpoints(tmp_path: Path) -> None:
    calls: list[int] = []

    class Broken(TransparencyLog):
        def publish(self, batch: list[tuple[bytes, tuple[str, str, int] | None]], final: bool = False) -> bool:
            calls.append(len(batch))
            if len(calls) == 1:
                raise RuntimeError("a bug")
            return super().publish(batch, final)

    tlog = Broken(FileBlobs(tmp_path), ORIGIN, "w", NoteSigner(ORIGIN, Ed25519PrivateKey.generate()), interval=0.01)
    tlog.start()
    await asyncio.to_thread(wait_until, lambda: len(calls) >= 3, 10, "checkpoints after the failed one")
    assert await tlog.close() and tlog.failures == 1 and (tmp_path / "w/checkpoint").is_file()


async def _killed(runtime: RecordingRuntime) -> None:
    """What kill -9 leaves of a processor: no closing digest, no last checkpoint; its spool folder, unlocked."""
    for task in (runtime.completer._task, runtime.digests._task, runtime.tlog and runtime.tlog._task):
        await cancel(task or None)
    await cancel(runtime.recorder._task)
    assert runtime.recorder.uploader is not None
    await runtime.recorder.uploader.stop()
    await runtime.recorder.spool.close(remove_if_empty=False)  # the lock goes, as when the kernel reaps it


async def test_a_killed_writers_unpublished_leaves_and_its_closing_digest_end_up_in_the_log(tmp_path: Path) -> None:
    key, pub = generate_keys(tmp_path / "keys")
    rec = Recording(
        directory=tmp_path / "rec",
        signing_key=key,
        flush_interval_ms=10,
        transparency_log=TransparencyLogConfig(origin=ORIGIN, checkpoint_interval_s=3600),
    )
    dead = build_runtime(rec)
    await dead.start()
    await emit_exchanges(dead.recorder, "before", 2)
    assert dead.recorder.uploader is not None and await dead.recorder.uploader.drain(5)
    assert await dead.digests.flush()  # digest 0 stored: a leaf queued, like the segments, for a checkpoint
    await emit_exchanges(dead.recorder, "after", 2)
    assert await dead.recorder.uploader.drain(5)  # stored, in no checkpoint and no digest yet: then it dies
    await _killed(dead)

    live = build_runtime(rec)
    await live.start()  # its completer adopts the dead writer's folder at once
    async with asyncio.timeout(10):  # adopted, shipped, its chain closed: the folder is gone
        while dead.recorder.spool.path.exists():  # noqa: ASYNC110 (the completer task works; this polls what it leaves)
            await asyncio.sleep(0.01)
    await live.close()

    store, blobs = FileStore(tmp_path / "rec"), FileBlobs(tmp_path / "rec" / ".tlog")
    public = load_public_key(pub)
    stored = stored_entries(store)
    dead_digests = store.read_digests()[dead.digests.writer]
    assert sorted(dead_digests) == [0, 1]  # its own, and the closing one the completer stored on its behalf
    assert stored - logged_entries(blobs, public) == set()  # every manifest and digest is a leaf of a log
    for session in ("before", "after"):
        assert prove_session(store, blobs, session, public).ok


async def test_the_journal_holds_what_no_checkpoint_has_and_an_adopter_logs_it_torn_line_skipped(
    tmp_path: Path,
) -> None:
    key = Ed25519PrivateKey.generate()
    blobs, journal = FileBlobs(tmp_path / "tlog"), tmp_path / "w" / JOURNAL
    journal.parent.mkdir()
    tlog = TransparencyLog(blobs, ORIGIN, "w", NoteSigner(ORIGIN, key), journal=journal.parent)
    tlog.digest_stored("w", 0, b"d0")
    assert len(journal.read_bytes().splitlines()) == 1
    assert await tlog.checkpoint() and not journal.exists()  # published: nothing left for an adopter
    tlog.digest_stored("w", 1, b"d1")
    journal.write_bytes(journal.read_bytes() + b'{"entry":"{\\"kind')  # killed in the middle of a line

    (tmp_path / "x").mkdir()
    adopter = TransparencyLog(blobs, ORIGIN, "x", NoteSigner(ORIGIN, key), journal=tmp_path / "x")
    assert await adopter.adopt(journal.parent) == 1 and not journal.exists()
    assert (tmp_path / "x" / JOURNAL).exists()  # journaled by the adopter before the dead one's went
    assert await adopter.checkpoint()
    assert {digest_entry("w", 0, b"d0"), digest_entry("w", 1, b"d1")} <= logged_entries(blobs, key.public_key())
