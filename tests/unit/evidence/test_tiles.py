"""C2SP tlog-tiles: paths, widths, bundles, and a tree built tile by tile that equals the RFC tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from extproc.evidence import merkle
from extproc.evidence.tiles import FileBlobs, TileBuilder, TileHashes, bundle, encode_index, tile_path, unbundle


@pytest.mark.parametrize(
    ("index", "path"), [(0, "000"), (5, "005"), (999, "999"), (1000, "x001/000"), (1234067, "x001/x234/067")]
)
def test_tile_indexes_are_3_digit_path_elements(index: int, path: str) -> None:
    assert encode_index(index) == path


def test_partial_and_entry_tile_paths() -> None:
    assert tile_path(0, 1234067, 17) == "tile/0/x001/x234/067.p/17"
    assert tile_path("entries", 3) == "tile/entries/003"


def test_bundles_are_uint16_length_prefixed() -> None:
    assert bundle([b"ab", b""]) == b"\x00\x02ab\x00\x00"
    assert unbundle(bundle([b"x" * 300, b"y"])) == [b"x" * 300, b"y"]
    with pytest.raises(ValueError):
        unbundle(b"\x00\x05ab")


def build(blobs: FileBlobs, n: int) -> TileBuilder:
    tree = TileBuilder()
    for i in range(n):
        for path, data in tree.add(i.to_bytes(4, "big")):
            blobs.put(f"log/{path}", data)
    for path, data in tree.partials():
        blobs.put(f"log/{path}", data)
    return tree


def test_the_spec_example_of_70000_entries_has_exactly_its_tiles(tmp_path: Path) -> None:
    """tlog-tiles: 273 full level-0 tiles, a partial of 112, one full level-1 tile, a partial level-1 tile of 17 and
    a partial level-2 tile of 1."""
    blobs = FileBlobs(tmp_path)
    tree = build(blobs, 70_000)
    level0 = {p.name for p in (tmp_path / "log/tile/0").iterdir()}
    assert len([n for n in level0 if n.isdigit()]) == 273 and (tmp_path / "log/tile/0/273.p/112").is_file()
    assert (tmp_path / "log/tile/1/000").stat().st_size == 8192
    assert (tmp_path / "log/tile/1/001.p/17").stat().st_size == 17 * 32
    assert (tmp_path / "log/tile/2/000.p/1").stat().st_size == 32
    assert (tmp_path / "log/tile/entries/273.p/112").is_file()
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(70_000)]
    assert tree.root() == merkle.root_of(leaves)
    assert merkle.subtree(TileHashes(blobs, "log", 70_000), 0, 70_000) == tree.root()


@pytest.mark.parametrize("n", [0, 1, 2, 255, 256, 257, 511, 512, 600])
def test_the_root_from_the_builder_and_from_the_tiles_is_the_rfc_root(tmp_path: Path, n: int) -> None:
    blobs = FileBlobs(tmp_path)
    tree = build(blobs, n)
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    assert tree.root() == merkle.root_of(leaves)
    hashes = TileHashes(blobs, "log", n)
    assert merkle.subtree(hashes, 0, n) == merkle.root_of(leaves)
    for m in {0, n // 2, n - 1} if n else set():
        proof = merkle.inclusion_proof(hashes, m, n)
        assert proof == merkle.inclusion_proof(merkle.LeafList(leaves), m, n)


def test_an_old_tree_size_is_read_from_its_partial_tiles_or_the_full_tile(tmp_path: Path) -> None:
    blobs = FileBlobs(tmp_path)
    build(blobs, 100)
    build(blobs, 300)  # the same leaves, further: tile/0/000 is full now, 000.p/100 stays
    leaves = [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(300)]
    assert merkle.subtree(TileHashes(blobs, "log", 100), 0, 100) == merkle.root_of(leaves[:100])
    (tmp_path / "log/tile/0/000.p/100").unlink()
    assert merkle.subtree(TileHashes(blobs, "log", 100), 0, 100) == merkle.root_of(leaves[:100])
