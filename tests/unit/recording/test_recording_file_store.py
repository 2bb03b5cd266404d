"""The file store: <root>/<session>/<writer>.jsonl, append-only; client-chosen ids never escape the root."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from extproc.recording.store import safe_key
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


@pytest.mark.parametrize("session", HOSTILE)
async def test_hostile_session_ids_stay_inside_the_root(tmp_path: Path, session: str) -> None:
    root = tmp_path / "root"
    store = FileStore(root)

    await store.append(session, "../../writer", b'{"seq":0}\n')
    await store.close()

    files = _files(tmp_path)
    assert len(files) == 1
    assert files[0].resolve().is_relative_to(root.resolve())
    assert files[0].parent.parent == root  # exactly <root>/<session>/<writer>.jsonl
    assert store.list_sessions() == [safe_key(session)]
    assert store.read_session(session) == {safe_key("../../writer"): b'{"seq":0}\n'}


async def test_appends_accumulate_per_session_and_writer(tmp_path: Path) -> None:
    store = FileStore(tmp_path)

    await store.append("s1", "w1", b"a\n")
    await store.append("s1", "w2", b"b\n")
    await store.append("s1", "w1", b"c\n")
    await store.append("s2", "w1", b"d\n")
    await store.sync()
    await store.close()

    assert store.list_sessions() == ["s1", "s2"]
    assert store.read_session("s1") == {"w1": b"a\nc\n", "w2": b"b\n"}
    assert store.read_session("s2") == {"w1": b"d\n"}
    assert store.read_session("never") == {}


async def test_reopened_store_appends_rather_than_truncates(tmp_path: Path) -> None:
    first = FileStore(tmp_path)
    await first.append("s", "w", b"one\n")
    await first.close()

    second = FileStore(tmp_path)
    await second.append("s", "w", b"two\n")
    await second.close()

    assert second.read_session("s") == {"w": b"one\ntwo\n"}


async def test_handles_beyond_max_open_are_evicted_without_losing_data(tmp_path: Path) -> None:
    store = FileStore(tmp_path, max_open=2)

    for round_ in range(3):
        for s in ("a", "b", "c", "d"):
            await store.append(s, "w", f"{round_}\n".encode())
    await store.close()

    assert {s: store.read_session(s)["w"] for s in "abcd"} == {s: b"0\n1\n2\n" for s in "abcd"}


def test_list_sessions_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    assert FileStore(tmp_path / "absent").list_sessions() == []


async def test_list_sessions_ignores_folders_without_streams(tmp_path: Path) -> None:
    (tmp_path / "empty-folder").mkdir()
    (tmp_path / "stray.txt").write_text("x")
    store = FileStore(tmp_path)
    await store.append("real", "w", b"x\n")
    await store.close()

    assert store.list_sessions() == ["real"]
