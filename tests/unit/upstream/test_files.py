"""A credential file: re-read when it changes (a Secret's new version), refused when unusable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from extproc.upstream.files import WatchedFile


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rereads_only_when_the_file_changed_and_the_interval_passed(tmp_path: Path) -> None:
    path, clock = tmp_path / "key", Clock()
    path.write_text("one\n")
    f = WatchedFile(path, clock, interval=1.0)
    assert f.value() == "one" and f.reads == 1
    path.write_text("two-longer\n")
    assert f.value() == "one"  # within the interval the file is not even looked at
    clock.now = 1.0
    assert f.value() == "two-longer" and f.reads == 2
    clock.now = 2.0
    assert f.value() == "two-longer" and f.reads == 2  # unchanged: not read again


def test_a_secret_update_by_symlink_swap_is_seen(tmp_path: Path) -> None:
    """Kubernetes updates a mounted Secret by pointing ``..data`` at a new directory."""
    for version, value in (("v1", "old"), ("v2", "new")):
        (tmp_path / version).mkdir()
        (tmp_path / version / "token").write_text(value)
    os.symlink("v1", tmp_path / "..data")
    os.symlink("..data/token", tmp_path / "token")
    clock = Clock()
    f = WatchedFile(tmp_path / "token", clock, interval=0)
    assert f.value() == "old"
    os.symlink("v2", tmp_path / "..data.tmp")
    os.replace(tmp_path / "..data.tmp", tmp_path / "..data")
    assert f.value() == "new"


@pytest.mark.parametrize(
    ("content", "error"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"a\nb\n", "more than one line", id="two-lines"),
        pytest.param(b"x" * (70 << 10), "larger than", id="too-big"),
    ],
)
def test_an_unusable_file_raises(tmp_path: Path, content: bytes, error: str) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=error):
        WatchedFile(path, Clock()).value()


def test_a_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        WatchedFile(tmp_path / "absent", Clock()).value()
