"""The write-ahead spool: appends and seals in order, one owner per folder, adoption, size bound, shipping."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.errors import StoreError
from extproc.recording.manifest import Manifest
from extproc.recording.spool import HEAD, Spool
from extproc.recording.spool_files import Append, stream_folder
from extproc.recording.store.file import FileStore


def _manifest(segment: int, final: bool = False, session: str = "s", writer: str = "w") -> Manifest:
    return Manifest(session, writer, segment, 0, 0, 1, 3, "x" * 64, "y" * 64, "0" * 64, final=final, created=1.0)


async def _seal(spool: Spool, manifest: Manifest) -> None:
    await spool.seal(manifest, manifest.to_bytes())


async def test_appends_and_seals_land_in_order_and_queue_for_upload(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "w")
    await spool.open()

    done, error = await spool.write_behind([Append("s", "w", 0, b"a\n"), Append("s", "w", 0, b"b\n")])
    await _seal(spool, _manifest(0))
    assert await spool.write_behind([Append("s", "w", 1, b"c\n")]) == (1, None)

    folder = tmp_path / "w" / stream_folder("s", "w")
    assert (done, error) == (2, None)
    assert (folder / "00000000.seg").read_bytes() == b"a\nb\n"
    assert (folder / "00000001.seg").read_bytes() == b"c\n"
    assert Manifest.from_bytes((folder / "00000000.manifest").read_bytes()).segment == 0
    assert [(r.session, r.number) for r in spool.ready] == [("s", 0)]
    assert spool.size == 6 and spool.changed.is_set()
    await spool.close()


async def test_a_live_writer_owns_its_folder(tmp_path: Path) -> None:
    owner = Spool(tmp_path, "w")
    await owner.open()

    assert await Spool.adopt(tmp_path / "w") is None  # locked: its writer lives
    await owner.close(remove_if_empty=False)
    adopted = await Spool.adopt(tmp_path / "w")
    assert adopted is not None
    await adopted.close()


async def test_adoption_finds_what_was_sealed_but_not_shipped(tmp_path: Path) -> None:
    first = Spool(tmp_path, "w")
    await first.open()
    await first.write_behind([Append("s", "w", 0, b"a\n")])
    await _seal(first, _manifest(0))
    await first.write_behind([Append("s", "w", 1, b"b\n")])
    await first.close(remove_if_empty=False)

    adopted = await Spool.adopt(tmp_path / "w")

    assert adopted is not None
    assert [r.number for r in adopted.ready] == [0]
    assert adopted.size == 4  # both segment files count against the bound
    await adopted.close()


async def test_the_size_bound_stops_admission_but_never_an_append(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "w", max_bytes=10)
    await spool.open()
    await spool.write_behind([Append("s", "w", 0, b"12345678\n")])
    assert spool.has_room

    # What an admitted exchange records is written past the bound: a refused line would hold back the seal behind
    # it, and a full spool could then never drain. The recorder admits no new exchange meanwhile.
    assert await spool.write_behind([Append("s", "w", 0, b"more\n")]) == (1, None)
    assert spool.size == 14 and not spool.has_room
    await spool.close()


async def test_an_unwritable_spool_fails_with_a_store_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")

    with pytest.raises(StoreError, match="cannot open spool"):
        await Spool(tmp_path / "file", "w").open()


async def test_shipping_keeps_the_head_manifest_and_a_final_segment_removes_the_stream(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "w")
    await spool.open()
    await spool.write_behind([Append("s", "w", 0, b"a\n")])
    await _seal(spool, _manifest(0))
    await spool.write_behind([Append("s", "w", 1, b"b\n")])
    await _seal(spool, _manifest(1, True))
    folder = tmp_path / "w" / stream_folder("s", "w")
    store = FileStore(tmp_path / "store")

    first = spool.ready.popleft()
    await store.put_segment(*await spool.load_many([first]))
    await spool.shipped_many([first])
    assert (folder / HEAD).exists() and not (folder / "00000000.seg").exists()
    last = spool.ready.popleft()
    await store.put_segment(*await spool.load_many([last]))
    await spool.shipped_many([last])

    assert not folder.exists()
    assert store.read_session("s")["w"].data == b"a\nb\n"
    await spool.close()
    assert not (tmp_path / "w").exists()  # nothing left: the folder goes with the lock


def test_beside_needs_a_local_store(tmp_path: Path) -> None:
    class Remote:
        pass

    assert Spool.beside(FileStore(tmp_path), "w").path == tmp_path / ".spool" / "w"
    with pytest.raises(ValueError, match="spool folder is required"):
        Spool.beside(Remote(), "w")  # type: ignore[arg-type]
