"""The witness: keeps a checkpoint only if it extends the one it kept; a rewritten, re-signed log is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from extproc.evidence.note import NoteSigner
from extproc.evidence.proofs import log_keys
from extproc.evidence.tiles import FileBlobs
from extproc.evidence.tlog import TransparencyLog
from extproc.evidence.witness import Fetch, follow, needed_tiles

ORIGIN = "gw.example/log"


def served(source: FileBlobs) -> Fetch:
    """What the audit API serves from the log folder (the listing, checkpoints, tiles)."""

    def fetch(path: str) -> bytes | None:
        return json.dumps({"logs": log_keys(source)}).encode() if not path else source.get(path)

    return fetch


def entries(first: int, last: int, tag: str = "") -> list[tuple[bytes, tuple[str, str, int] | None]]:
    return [(f'{{"n":{i}{tag}}}'.encode(), None) for i in range(first, last)]


def test_the_tiles_of_a_size_are_the_specs() -> None:
    assert list(needed_tiles(256)) == ["tile/0/000", "tile/1/000.p/1"]
    assert len(list(needed_tiles(70_000))) == 274 + 2 + 1


def test_a_witness_keeps_each_checkpoint_that_extends_the_last_and_fetches_only_new_tiles(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    source, mirror = FileBlobs(tmp_path / "log"), FileBlobs(tmp_path / "witness")
    tlog = TransparencyLog(source, ORIGIN, "w", NoteSigner(ORIGIN, key))
    tlog.publish(entries(0, 600))
    [first] = follow(served(source), mirror, key.public_key())
    assert first.problems == [] and first.new is not None and first.new.size == 600 and first.fetched == 4
    tlog.publish(entries(600, 700))
    [second] = follow(served(source), mirror, key.public_key())
    assert second.problems == [] and second.old is not None and second.old.size == 600
    assert second.fetched == 1  # 600 -> 700: only tile/0/002.p/188 is new
    assert (tmp_path / "witness/w/checkpoints/000000000700").is_file()


@pytest.mark.parametrize("rewrite_from", [100, 290])  # inside a full tile the witness kept / only past it
def test_a_rewritten_log_resigned_with_the_same_key_is_refused_and_kept_as_evidence(
    tmp_path: Path, rewrite_from: int
) -> None:
    key = Ed25519PrivateKey.generate()
    source, mirror = FileBlobs(tmp_path / "log"), FileBlobs(tmp_path / "witness")
    TransparencyLog(source, ORIGIN, "w", NoteSigner(ORIGIN, key)).publish(entries(0, 300))
    follow(served(source), mirror, key.public_key())
    kept = (tmp_path / "witness/w/checkpoint").read_bytes()

    TransparencyLog(source, ORIGIN, "w", NoteSigner(ORIGIN, key)).publish(
        entries(0, rewrite_from) + entries(rewrite_from, 400, ",1")
    )
    [f] = follow(served(source), mirror, key.public_key())

    assert len(f.problems) == 1 and f.problems[0].startswith("INCONSISTENT: size 300 -> 400")
    assert (tmp_path / "witness/w/checkpoint").read_bytes() == kept
    assert (tmp_path / "witness/w/checkpoint.rejected").read_bytes() == (tmp_path / "log/w/checkpoint").read_bytes()


def test_tiles_that_do_not_match_the_checkpoint_or_another_key_are_refused(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    source = FileBlobs(tmp_path / "log")
    TransparencyLog(source, ORIGIN, "w", NoteSigner(ORIGIN, key)).publish(entries(0, 10))
    [f] = follow(served(source), FileBlobs(tmp_path / "w1"), Ed25519PrivateKey.generate().public_key())
    assert f.problems and f.problems[0].startswith("checkpoint:")

    tile = tmp_path / "log/w/tile/0/000.p/10"
    tile.write_bytes(bytes(32) + tile.read_bytes()[32:])
    [f] = follow(served(source), FileBlobs(tmp_path / "w2"), key.public_key())
    assert f.problems == ["the tiles served do not give the checkpoint's root"]
