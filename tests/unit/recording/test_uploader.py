"""The uploader: ships in order, deletes only what the store confirmed, backs off with jitter, tells the digests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from extproc.errors import StoreError
from extproc.recording.manifest import Manifest
from extproc.recording.spool import Spool
from extproc.recording.spool_files import Append, stream_folder
from extproc.recording.store import Segment, put_each
from extproc.recording.store.file import FileStore
from extproc.recording.uploader import Uploader


class Store(FileStore):
    """A real file store that refuses the first ``failures`` puts."""

    def __init__(self, root: Path, failures: int = 0) -> None:
        super().__init__(root)
        self.failures = failures
        self.puts: list[int] = []

    async def put_segment(self, segment: Segment) -> None:
        self.puts.append(segment.number)
        if self.failures:
            self.failures -= 1
            raise StoreError("connection refused")
        await super().put_segment(segment)

    async def put_segments(self, segments: list[Segment]) -> tuple[int, Exception | None]:
        return await put_each(self, segments)  # one by one through put_segment, which refuses

    def put_segments_blocking(self, segments: list[Segment]) -> tuple[int, Exception | None]:
        """The uploader's path for a file store (read and stored in one thread hop), refusing the same way."""
        for n, segment in enumerate(segments):
            self.puts.append(segment.number)
            if self.failures:
                self.failures -= 1
                return n, StoreError("connection refused")
            _, error = super().put_segments_blocking([segment])
            if error is not None:
                return n, error
        return len(segments), None


def _manifest(segment: int, final: bool = False) -> Manifest:
    return Manifest("s", "w", segment, segment, segment, 1, 2, "x" * 64, "y" * 64, "0" * 64, final=final, created=1.0)


_opened: list[Spool] = []


@pytest.fixture(autouse=True)
async def _close_spools() -> AsyncIterator[None]:
    """Each test's spools are closed after it (their lock files open otherwise until the GC finds them)."""
    yield
    while _opened:
        await _opened.pop().close(remove_if_empty=False)


async def _spool(tmp_path: Path, segments: int) -> Spool:
    spool = Spool(tmp_path / "spool", "w")
    await spool.open()
    _opened.append(spool)
    for n in range(segments):
        await spool.write_behind([Append("s", "w", n, b"%d\n" % n)])
        manifest = _manifest(n, final=n == segments - 1)
        await spool.seal(manifest, manifest.to_bytes())
    return spool


async def test_ships_in_order_and_reports_each_stored_segment(tmp_path: Path) -> None:
    spool = await _spool(tmp_path, 3)
    store = Store(tmp_path / "store")
    stored: list[int] = []

    async def on_stored(seg: Segment) -> None:
        stored.append(seg.number)

    up = Uploader(spool, store, on_stored=on_stored)

    assert await up.ship_once()

    assert store.puts == stored == [0, 1, 2]
    assert store.read_session("s")["w"].data == b"0\n1\n2\n"
    assert not spool.ready and up.uploaded == 3 and len(up.latencies) == 3
    await spool.close()


async def test_a_refused_segment_stays_and_nothing_after_it_is_tried(tmp_path: Path) -> None:
    spool = await _spool(tmp_path, 2)
    store = Store(tmp_path / "store", failures=1)
    stored: list[int] = []

    async def on_stored(seg: Segment) -> None:
        stored.append(seg.number)

    up = Uploader(spool, store, on_stored=on_stored)

    assert not await up.ship_once()
    assert up.failing and store.puts == [0] and stored == [] and len(spool.ready) == 2
    assert await up.ship_once()

    assert not up.failing and store.puts == [0, 0, 1] and stored == [0, 1]
    await spool.close()


async def test_drain_retries_with_backoff_until_its_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spool = await _spool(tmp_path, 1)
    store = Store(tmp_path / "store", failures=1000)
    now = [0.0]
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:  # the uploader's clock advances by what it waits
        sleeps.append(seconds)
        now[0] += seconds

    up = Uploader(spool, store, backoff=0.1, clock=lambda: now[0], rand=lambda: 1.0)
    monkeypatch.setattr("extproc.recording.uploader.asyncio.sleep", fake_sleep)

    assert not await up.drain(within=5.0)
    monkeypatch.undo()

    assert sleeps[:4] == [0.2, 0.4, 0.8, 1.6]  # exponential (the jitter's ceiling here), never a tight loop
    assert sum(sleeps) <= 5.0 + 1e-9 and len(spool.ready) == 1
    await spool.close()


async def test_stop_cancels_the_idle_task(tmp_path: Path) -> None:
    spool = await _spool(tmp_path, 0)
    up = Uploader(spool, Store(tmp_path / "store"))
    up.start()

    await up.stop()

    assert up._task is None
    await spool.close()


class BatchCounting(FileStore):
    """The real file store (a batch store), counting its batches; the segment ``refuse`` fails (a full disk)."""

    def __init__(self, root: Path, refuse: int | None = None) -> None:
        super().__init__(root)
        self.batches: list[list[int]] = []
        self.refuse = refuse

    def _put(self, segment: Segment, data_path: Path, manifest_path: Path) -> None:
        if segment.number == self.refuse:
            raise OSError(28, "No space left on device")
        super()._put(segment, data_path, manifest_path)

    def put_segments_blocking(self, segments: list[Segment]) -> tuple[int, Exception | None]:
        self.batches.append([s.number for s in segments])  # the uploader's one thread hop per batch
        return super().put_segments_blocking(segments)


async def test_ready_segments_go_to_a_batch_store_in_one_call(tmp_path: Path) -> None:
    spool = await _spool(tmp_path, 5)
    store = BatchCounting(tmp_path / "store")
    up = Uploader(spool, store)

    assert await up.ship_once()

    assert store.batches == [[0, 1, 2, 3, 4]]  # one thread hop for the five, not one each
    assert store.read_session("s")["w"].data == b"0\n1\n2\n3\n4\n"
    assert not spool.ready and up.uploaded == 5


async def test_a_batch_that_fails_half_way_keeps_the_rest_in_order(tmp_path: Path) -> None:
    spool = await _spool(tmp_path, 4)
    store = BatchCounting(tmp_path / "store", refuse=2)
    stored: list[int] = []

    async def on_stored(seg: Segment) -> None:
        stored.append(seg.number)

    up = Uploader(spool, store, on_stored=on_stored)

    assert not await up.ship_once()
    assert stored == [0, 1] and [r.number for r in spool.ready] == [2, 3]  # stored ones left the spool, in order
    assert not (tmp_path / "spool" / "w" / stream_folder("s", "w") / "00000001.seg").exists()
    store.refuse = None
    assert await up.ship_once()
    assert stored == [0, 1, 2, 3] and store.read_session("s")["w"].data == b"0\n1\n2\n3\n"
