"""The file store: <root>/<session>/<writer>.jsonl, append-only; client-chosen ids never escape the root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from extproc.errors import StoreError
from extproc.recording.store import Segment, safe_key
from extproc.recording.store.file import FileStore


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


HOSTILE = [
    pytest.param("../../etc", id="dot-dot"),
    pytest.param("..", id="just-dot-dot"),
    pytest.param(".", id="dot"),
    pytest.param("a/b", id="slash"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("a\\..\\b", id="backslash"),
    pytest.param("x" * 300, id="very-long"),
    pytest.param("sess..ion", id="embedded-dot-dot"),
    pytest.param(".hidden", id="leading-dot"),
    pytest.param("", id="empty"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("é/\udcff", id="non-ascii-and-lone-surrogate"),
]


@pytest.mark.parametrize("name", ["3f2a9c1e-7b4d-4e8a-9c1f-0a2b3c4d5e6f", "host-123-abcd", "A.b_c-9", "x" * 128])
def test_safe_key_keeps_harmless_ids(name: str) -> None:
    assert safe_key(name) == name


@pytest.mark.parametrize("name", HOSTILE)
def test_safe_key_hashes_hostile_ids(name: str) -> None:
    key = safe_key(name)

    assert re.fullmatch(r"h-[0-9a-f]{40}", key)
    assert safe_key(name) == key  # stable: the same session always lands in the same folder


def test_safe_key_distinct_ids_get_distinct_keys() -> None:
    names = ["../a", "../b", "a/b", "a/c", "x" * 200, "x" * 201]

    assert len({safe_key(n) for n in names}) == len(names)


def _seg(session: str, writer: str, n: int, data: bytes) -> Segment:
    return Segment(session, writer, n, data, b'{"segment":%d,"size":%d}' % (n, len(data)), 0.0)


@pytest.mark.parametrize("session", HOSTILE)
async def test_hostile_session_ids_stay_inside_the_root(tmp_path: Path, session: str) -> None:
    root = tmp_path / "root"
    store = FileStore(root)

    await store.put_segment(_seg(session, "../../writer", 0, b'{"seq":0}\n'))
    await store.close()

    files = _files(tmp_path)
    assert len(files) == 2  # the stream and its manifests
    assert all(f.resolve().is_relative_to(root.resolve()) for f in files)
    assert all(f.parent.parent == root for f in files)  # exactly <root>/<session>/<writer>.{jsonl,manifests}
    assert store.list_sessions() == [safe_key(session)]
    assert store.read_session(session)[safe_key("../../writer")].data == b'{"seq":0}\n'


async def test_segments_accumulate_per_session_and_writer(tmp_path: Path) -> None:
    store = FileStore(tmp_path)

    await store.put_segment(_seg("s1", "w1", 0, b"a\n"))
    await store.put_segment(_seg("s1", "w2", 0, b"b\n"))
    await store.put_segment(_seg("s1", "w1", 1, b"c\n"))
    await store.put_segment(_seg("s2", "w1", 0, b"d\n"))
    await store.close()

    assert store.list_sessions() == ["s1", "s2"]
    s1 = store.read_session("s1")
    assert {w: d.data for w, d in s1.items()} == {"w1": b"a\nc\n", "w2": b"b\n"}
    assert s1["w1"].manifests == [b'{"segment":0,"size":2}', b'{"segment":1,"size":2}']
    assert store.read_session("s2")["w1"].data == b"d\n"
    assert store.read_session("never") == {}


async def test_a_retried_segment_is_stored_once(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.put_segment(_seg("s", "w", 0, b"one\n"))

    await FileStore(tmp_path).put_segment(_seg("s", "w", 0, b"one\n"))  # a new process retries: already there

    assert store.read_session("s")["w"].data == b"one\n"
    assert len(store.read_session("s")["w"].manifests) == 1


async def test_half_stored_segment_is_replaced_not_doubled(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    await store.put_segment(_seg("s", "w", 0, b"one\n"))
    with (tmp_path / "s" / "w.jsonl").open("ab") as f:  # killed after the data, before the manifest
        f.write(b"tw")

    await FileStore(tmp_path).put_segment(_seg("s", "w", 1, b"two\n"))

    assert store.read_session("s")["w"].data == b"one\ntwo\n"


async def test_a_segment_out_of_order_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match=r"segment 2 .* before segment 0"):
        await FileStore(tmp_path).put_segment(_seg("s", "w", 2, b"x\n"))


async def test_put_error_names_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")

    with pytest.raises(StoreError, match=r"cannot append to .*blocker/rec/s/w\.jsonl"):
        await FileStore(blocker / "rec").put_segment(_seg("s", "w", 0, b"x\n"))


def test_list_sessions_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    assert FileStore(tmp_path / "absent").list_sessions() == []


async def test_list_sessions_ignores_folders_without_streams_and_the_spool(tmp_path: Path) -> None:
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / ".spool" / "w").mkdir(parents=True)
    (tmp_path / ".spool" / "w" / "x.jsonl").write_text("x")
    (tmp_path / "stray.txt").write_text("x")
    store = FileStore(tmp_path)
    await store.put_segment(_seg("real", "w", 0, b"x\n"))

    assert store.list_sessions() == ["real"]
