"""RFC 9162 hashing and proofs against Certificate Transparency's reference vectors, and the RFC's own example tree."""

from __future__ import annotations

import hashlib

import pytest

from extproc.evidence import merkle
from extproc.evidence.merkle import LeafList

# The reference leaves and tree heads of Certificate Transparency's implementation (sizes 0..8).
ENTRIES = ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
ROOTS = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
LEAVES = [merkle.leaf_hash(bytes.fromhex(e)) for e in ENTRIES]
INCLUSION = [
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
CONSISTENCY = [
    (2, 8, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


@pytest.mark.parametrize("size", range(9))
def test_tree_heads_match_the_reference(size: int) -> None:
    assert merkle.root_of(LEAVES[:size]).hex() == ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_reference(index: int, size: int, proof: list[str]) -> None:
    got = merkle.inclusion_proof(LeafList(LEAVES), index, size)
    assert [p.hex() for p in got] == proof
    assert merkle.verify_inclusion(index, size, LEAVES[index], got, bytes.fromhex(ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_reference(old: int, new: int, proof: list[str]) -> None:
    got = merkle.consistency_proof(LeafList(LEAVES), old, new)
    assert [p.hex() for p in got] == proof
    assert merkle.verify_consistency(old, new, bytes.fromhex(ROOTS[old]), bytes.fromhex(ROOTS[new]), got)


def test_the_rfc_example_tree_of_seven_leaves() -> None:
    """RFC 9162 2.1.5: the proofs of the seven-leaf example are exactly the nodes the RFC names."""
    d = [merkle.leaf_hash(bytes([i])) for i in range(7)]
    a, b, c, dd, e, f, j = d
    g, h, i = merkle.node_hash(a, b), merkle.node_hash(c, dd), merkle.node_hash(e, f)
    k, l_ = merkle.node_hash(g, h), merkle.node_hash(i, j)
    tree = LeafList(d)
    assert merkle.inclusion_proof(tree, 0, 7) == [b, h, l_]  # d0: [b, h, l]
    assert merkle.inclusion_proof(tree, 3, 7) == [c, g, l_]  # d3: [c, g, l]
    assert merkle.inclusion_proof(tree, 4, 7) == [f, j, k]  # d4: [f, j, k]
    assert merkle.inclusion_proof(tree, 6, 7) == [i, k]  # d6: [i, k]
    assert merkle.consistency_proof(tree, 3, 7) == [c, dd, g, l_]  # [c, d, g, l]
    assert merkle.consistency_proof(tree, 4, 7) == [l_]  # [l]
    assert merkle.consistency_proof(tree, 6, 7) == [i, j, k]  # [i, j, k]


LEAVES_40 = [merkle.leaf_hash(hashlib.sha256(bytes([n])).digest()) for n in range(40)]
ROOTS_40 = [merkle.root_of(LEAVES_40[:n]) for n in range(41)]


def test_every_proof_of_every_tree_up_to_40_verifies_and_no_tampered_one_does() -> None:
    tree = LeafList(LEAVES_40)
    for n in range(1, 41):
        for m in range(n):
            proof = merkle.inclusion_proof(tree, m, n)
            assert merkle.verify_inclusion(m, n, LEAVES_40[m], proof, ROOTS_40[n])
            assert not merkle.verify_inclusion(m, n, LEAVES_40[(m + 1) % 40], proof, ROOTS_40[n])
            if proof:
                assert not merkle.verify_inclusion(m, n, LEAVES_40[m], proof[:-1], ROOTS_40[n])
                assert not merkle.verify_inclusion(m, n, LEAVES_40[m], [*proof, proof[0]], ROOTS_40[n])
        for old in range(n + 1):
            proof = merkle.consistency_proof(tree, old, n)
            assert merkle.verify_consistency(old, n, ROOTS_40[old], ROOTS_40[n], proof)
            if 0 < old < n:
                assert not merkle.verify_consistency(old, n, ROOTS_40[old], ROOTS_40[n - 1], proof)
                bent = [bytes(32), *proof[1:]]
                assert not merkle.verify_consistency(old, n, ROOTS_40[old], ROOTS_40[n], bent)
