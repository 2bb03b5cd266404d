"""Deleting evidence is detectable: `store verify` walks each writer's signed digest chain against the store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from recording_helpers import cli, record_with_digests

from extproc.recording.digest import Digest, DigestLog
from extproc.recording.manifest import Signer, generate_keys
from extproc.recording.store.file import FileStore


@pytest.fixture
async def recorded(tmp_path: Path) -> tuple[Path, Path]:
    """Three sessions by writer w (one digest each, then the closing one), and one more session by writer v."""
    key, pub = generate_keys(tmp_path / "keys")
    root = tmp_path / "rec"
    store = FileStore(root)
    await record_with_digests(store, root / ".spool", key, ["sess-a", "sess-b", "sess-c"])
    await record_with_digests(store, root / ".spool", key, ["sess-b"], writer="v", exchanges=2)
    return root, pub


def _verify(root: Path, *extra: str) -> tuple[int, str]:
    result = cli("store", "verify", "--dir", str(root), *extra)
    return result.returncode, result.stdout


def _digest(root: Path, writer: str, n: int) -> Path:
    return root / ".digests" / writer / f"{n:08d}.json"


def delete_a_session(root: Path) -> None:
    for p in (root / "sess-b").iterdir():
        p.unlink()
    (root / "sess-b").rmdir()


def drop_the_last_segments(root: Path) -> None:
    lines = (root / "sess-a" / "w.jsonl").read_bytes().splitlines(keepends=True)
    manifests = (root / "sess-a" / "w.manifests").read_bytes().splitlines(keepends=True)
    keep = json.loads(manifests[1])["last"] + 1  # segments 0 and 1 stay; 2.. (and the final one) go
    (root / "sess-a" / "w.jsonl").write_bytes(b"".join(lines[:keep]))
    (root / "sess-a" / "w.manifests").write_bytes(b"".join(manifests[:2]))


def delete_a_stream(root: Path) -> None:
    (root / "sess-b" / "v.jsonl").unlink()
    (root / "sess-b" / "v.manifests").unlink()


def edit_a_digest(root: Path) -> None:
    path = _digest(root, "w", 1)
    doc = json.loads(path.read_bytes())
    doc["segments"] = doc["segments"][:-1]  # hide a segment from the evidence
    path.write_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())


def delete_a_digest(root: Path) -> None:
    _digest(root, "w", 1).unlink()


def delete_the_first_digest(root: Path) -> None:
    _digest(root, "w", 0).unlink()


def delete_the_closing_digest_and_a_session(root: Path) -> None:
    _digest(root, "w", 3).unlink()
    delete_a_session(root)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        pytest.param(delete_a_session, ["session 'sess-b' missing (deleted)"], id="session"),
        pytest.param(
            drop_the_last_segments,
            ["session 'sess-a': stream w: segment 2 missing (deleted), listed by digest 0 of writer w"],
            id="last-segments",
        ),
        pytest.param(delete_a_stream, ["session 'sess-b': stream v missing (deleted): segments 0..2"], id="stream"),
        pytest.param(
            edit_a_digest,
            [
                "digest 1 of writer w: signature does not match its content (digest edited)",
                "digest 2 of writer w: does not follow digest 1",
            ],
            id="edited-digest",
        ),
        pytest.param(delete_a_digest, ["digest 1 of writer w: missing (deleted)"], id="deleted-digest"),
        pytest.param(
            delete_the_first_digest,
            ["digest 0 of writer w: missing (deleted): the chain does not start at digest 0"],
            id="deleted-first-digest",
        ),
    ],
)
async def test_store_verify_names_what_was_removed(
    recorded: tuple[Path, Path], tamper: Callable[[Path], None], expected: list[str]
) -> None:
    root, pub = recorded
    assert _verify(root, "--public-key", str(pub))[0] == 0

    tamper(root)
    code, out = _verify(root, "--public-key", str(pub))

    assert code == 1, out
    for phrase in expected:
        assert phrase in out, out


async def test_dropped_last_segments_verify_as_open_per_session_but_fail_the_store(recorded: tuple[Path, Path]) -> None:
    root, pub = recorded
    drop_the_last_segments(root)

    session = cli("sessions", "verify", "sess-a", "--dir", str(root), "--public-key", str(pub), "--allow-open")

    assert session.returncode == 0 and "OPEN" in session.stdout  # what one session's own evidence can tell
    assert _verify(root, "--public-key", str(pub))[0] == 1  # the digests know more


async def test_intact_store_verifies_and_says_what_was_checked(recorded: tuple[Path, Path]) -> None:
    root, pub = recorded

    code, out = _verify(root, "--public-key", str(pub))
    unchecked_code, unchecked = _verify(root)

    assert code == 0, out
    assert "OK: 6 digests, 3 sessions, 18 segments listed; signatures checked" in out
    assert unchecked_code == 0 and "signatures NOT checked" in unchecked
    assert "digests are signed but not checked (pass --public-key)" in unchecked


async def test_edited_digest_without_the_key_still_breaks_the_chain(recorded: tuple[Path, Path]) -> None:
    root, _ = recorded
    edit_a_digest(root)

    code, out = _verify(root)

    assert code == 1
    assert "digest 2 of writer w: does not follow digest 1" in out


async def test_another_key_fails(recorded: tuple[Path, Path], tmp_path: Path) -> None:
    root, _ = recorded
    _, other = generate_keys(tmp_path / "other")

    code, out = _verify(root, "--public-key", str(other))

    assert code == 1 and "digest 0 of writer w: signed by another key" in out


async def test_since_skips_older_digests(recorded: tuple[Path, Path]) -> None:
    root, pub = recorded
    delete_a_session(root)  # listed by digests written a moment ago

    assert _verify(root, "--public-key", str(pub), "--since", "1h")[0] == 1
    code, out = _verify(root, "--public-key", str(pub), "--since", "2999-01-01T00:00:00Z")
    assert code == 1 and "no digests in the store since then" in out


async def test_an_empty_store_is_a_finding_and_a_missing_dir_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()

    assert _verify(tmp_path / "empty") == (1, _verify(tmp_path / "empty")[1])
    assert "no digests in the store" in _verify(tmp_path / "empty")[1]
    assert cli("store", "verify", "--dir", str(tmp_path / "nope")).returncode == 2


async def test_a_refused_digest_keeps_its_number_and_link_and_is_retried(tmp_path: Path) -> None:
    class Down(FileStore):
        down = True

        async def put_digest(self, writer: str, number: int, data: bytes) -> None:
            if self.down:
                from extproc.errors import StoreError

                raise StoreError("store down")
            await super().put_digest(writer, number, data)

    store = Down(tmp_path)
    log = DigestLog(store, "w", Signer(None), interval=3600)
    assert not await log.flush()  # digest 0 queued
    assert not await log.flush()  # digest 1 queued behind it
    store.down = False
    assert await log.close()  # 0, 1 and the closing 2, in order

    stored = store.read_digests()["w"]
    digests = [Digest.from_bytes(stored[n]) for n in sorted(stored)]
    assert [d.number for d in digests] == [0, 1, 2]
    assert [d.final for d in digests] == [False, False, True]
    assert "no closing digest" not in _verify(tmp_path)[1]
