"""Build the recording path from gateway.yaml: store, signer, spool, uploader, digest log, recorder, completer."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from extproc.recording.bounds import BoundedRecorder, RecordingLevels, Retention, log_unrecorded
from extproc.recording.completer import Completer
from extproc.recording.config import Recording
from extproc.recording.digest import DigestLog
from extproc.recording.manifest import Signer
from extproc.recording.recorder import Recorder, new_writer_id
from extproc.recording.shred import KeyWatch, PayloadSealer, build_keyring
from extproc.recording.spool import Spool
from extproc.recording.store import Store
from extproc.recording.store.file import FileStore
from extproc.recording.uploader import Uploader
from extproc.recording.writer import RecorderOptions

if TYPE_CHECKING:
    from extproc.evidence.tlog import TransparencyLog
    from extproc.recording.store import Segment

log = logging.getLogger(__name__)


def build_store(rec: Recording) -> Store:
    """The configured backend (for the processor and for the sessions CLI alike)."""
    if rec.store == "s3" and rec.s3 is not None:
        from extproc.recording.store.s3 import S3Store

        lock = rec.s3.object_lock
        return S3Store(
            rec.s3.bucket,
            rec.s3.prefix,
            region=rec.s3.region,
            endpoint_url=rec.s3.endpoint_url,
            object_lock_mode=lock.mode if lock else None,
            object_lock_days=lock.retain_days if lock else 0,
            kms_key_id=rec.s3.kms_key_id,
            compression=rec.compression,
        )
    return FileStore(rec.directory)


@dataclass
class RecordingRuntime:
    """What a processor runs for recording; ``start``/``close`` in that order."""

    store: Store
    recorder: Recorder
    completer: Completer
    digests: DigestLog
    retention: Retention | None = None
    tlog: TransparencyLog | None = None
    keys: KeyWatch | None = None  # encrypt_payloads: forgets the keys of subjects erased meanwhile

    async def start(self) -> None:
        await self.recorder.start()
        if self.keys is not None:
            self.keys.start()
        self.completer.start()  # first round at once: a predecessor's leftovers are shipped and marked
        self.digests.start()
        if self.tlog is not None:
            self.tlog.start()
        if self.retention is not None:
            self.retention.start()

    async def close(self) -> None:
        if self.keys is not None:
            await self.keys.stop()
        if self.retention is not None:
            await self.retention.stop()
        await self.completer.stop()
        await self.recorder.close()
        await self.digests.close()  # after the last segments were shipped: the closing digest lists them
        if self.tlog is not None:
            await self.tlog.close()  # after the closing digest: the last checkpoint covers it
        await self.store.close()


def recorder_options(rec: Recording) -> RecorderOptions:
    """The recorder's options from ``recording:`` (gateway.yaml's milliseconds become seconds here, once)."""
    return RecorderOptions(
        queue_size=rec.queue_size,
        flush_interval=rec.flush_interval_ms / 1000,
        seal_interval=rec.seal_interval_ms / 1000 if rec.seal_interval_ms is not None else None,
        seal_rate=rec.max_seals_per_second,
        segment_bytes=rec.segment_max_bytes,
        segment_age=rec.segment_max_age_ms / 1000,
        idle_timeout=rec.session_idle_timeout_s,
        required=rec.required,
    )


def build_runtime(rec: Recording) -> RecordingRuntime:
    store = build_store(rec)
    signer = Signer.from_file(rec.signing_key)
    if signer.public is None:
        log.warning("recording.signing_key not set: segment manifests are hashed and chained but not signed")
    writer = new_writer_id()
    spool = Spool(rec.spool, writer, rec.spool_max_bytes)
    tlog = None
    on_stored: Callable[[Segment], Awaitable[None]]
    if rec.transparency_log is not None:
        from extproc.evidence.tlog import LoggedDigests, build_log

        tlog = build_log(rec.transparency_log, rec.signing_key, store, writer, journal=spool.path)
        digests = DigestLog(
            LoggedDigests(store, tlog), writer, signer, interval=rec.digest_interval_s, journal=spool.path
        )
        on_stored = _both(digests.stored, tlog.segment_stored)
    else:
        digests = DigestLog(store, writer, signer, interval=rec.digest_interval_s, journal=spool.path)
        on_stored = digests.stored
    log_unrecorded(dict(rec.servers), rec.off_acknowledged)
    recorder = BoundedRecorder(
        store,
        spool,
        recorder_options(rec),
        levels=RecordingLevels(dict(rec.servers), rec.max_event_body_bytes),
        sealer=PayloadSealer(keyring) if (keyring := build_keyring(rec)) is not None else None,
        signer=signer,
        uploader=Uploader(spool, store, on_stored=on_stored),
    )
    completer = Completer(
        rec.spool,
        store,
        recorder,
        signer,
        interval=rec.completer_interval_s,
        on_stored=on_stored,
        digest_store=digests.store,  # with a transparency log: a dead writer's digests become leaves too
        adopt_leaves=tlog.adopt if tlog is not None else None,
    )
    retention = None
    if rec.retention is not None and rec.store == "file":
        days = rec.retention.max_age_days
        retention = Retention(
            rec.directory,
            recorder.emit,
            max_age_s=days * 86400 if days is not None else None,
            max_total_bytes=rec.retention.max_total_bytes,
            interval=rec.retention.interval_s,
        )
    keys = KeyWatch(keyring) if keyring is not None else None
    return RecordingRuntime(store, recorder, completer, digests, retention, tlog, keys)


def _both(
    first: Callable[[Segment], Awaitable[None]], second: Callable[[Segment], Awaitable[None]]
) -> Callable[[Segment], Awaitable[None]]:
    """An ``on_stored`` that tells the digest log, then the transparency log."""

    async def stored(segment: Segment) -> None:
        await first(segment)
        await second(segment)

    return stored
