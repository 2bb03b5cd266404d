"""RFC 9162 Merkle trees: leaf and node hashing, tree heads, inclusion and consistency proofs.

Written plainly from RFC 9162 section 2.1 (no kept PyPI library offers these as an API: sigstore keeps its own
inside its client, the rest are young single-author packages). The tree is read through ``Hashes``: any object
that gives the hash of a *perfect, aligned* subtree (``2**k`` leaves starting at a multiple of ``2**k``); the
tiles (``tiles.py``) are one, a plain list of leaf hashes (``LeafList``) another. The tests run the reference
vectors of Certificate Transparency's implementation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Protocol

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(entry: bytes) -> bytes:
    """HASH(0x00 || entry)."""
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || left || right)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n >= 2): where RFC 9162 splits a tree of ``n`` leaves."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_root(hashes: Sequence[bytes]) -> bytes:
    """MTH of a power-of-two number of leaf (or subtree) hashes."""
    level = list(hashes)
    while len(level) > 1:
        level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def root_of(hashes: Sequence[bytes]) -> bytes:
    """MTH of any number of leaf hashes (RFC 9162 2.1.1): perfect subtrees by the binary digits of the size."""
    if not hashes:
        return EMPTY_ROOT
    peaks: list[bytes] = []
    start, n = 0, len(hashes)
    while start < n:
        size = 1 << ((n - start).bit_length() - 1)
        peaks.append(perfect_root(hashes[start : start + size]))
        start += size
    return fold(peaks)


def fold(peaks: Sequence[bytes]) -> bytes:
    """The root over perfect subtrees of decreasing size, left to right (the right edge hashes first)."""
    h = peaks[-1]
    for p in reversed(peaks[:-1]):
        h = node_hash(p, h)
    return h


class Hashes(Protocol):
    """A tree of known size whose perfect, aligned subtrees can be hashed."""

    def perfect(self, start: int, size: int) -> bytes:
        """MTH(D[start:start+size]); ``size`` a power of two, ``start`` a multiple of it."""
        ...


class LeafList:
    """``Hashes`` over an in-memory list of leaf hashes (tests, small trees)."""

    def __init__(self, leaves: Sequence[bytes]) -> None:
        self.leaves = leaves

    def perfect(self, start: int, size: int) -> bytes:
        return perfect_root(self.leaves[start : start + size])


def subtree(tree: Hashes, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for any range inside the tree."""
    n = end - start
    if n == 0:
        return EMPTY_ROOT
    if n & (n - 1) == 0 and start % n == 0:
        return tree.perfect(start, n)
    k = split(n)
    return node_hash(subtree(tree, start, start + k), subtree(tree, start + k, end))


def inclusion_proof(tree: Hashes, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) (RFC 9162 2.1.3.1)."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    return _path(tree, index, 0, size)


def _path(tree: Hashes, m: int, start: int, end: int) -> list[bytes]:
    n = end - start
    if n == 1:
        return []
    k = split(n)
    if m < k:
        return [*_path(tree, m, start, start + k), subtree(tree, start + k, end)]
    return [*_path(tree, m - k, start + k, end), subtree(tree, start, start + k)]


def consistency_proof(tree: Hashes, old: int, new: int) -> list[bytes]:
    """PROOF(old, D[0:new]) (RFC 9162 2.1.4.1)."""
    if not 0 <= old <= new:
        raise ValueError(f"no consistency proof from size {old} to size {new}")
    if old == 0 or old == new:
        return []
    return _subproof(tree, old, 0, new, True)


def _subproof(tree: Hashes, m: int, start: int, end: int, whole: bool) -> list[bytes]:
    n = end - start
    if m == n:
        return [] if whole else [subtree(tree, start, end)]
    k = split(n)
    if m <= k:
        return [*_subproof(tree, m, start, start + k, whole), subtree(tree, start + k, end)]
    return [*_subproof(tree, m - k, start + k, end, False), subtree(tree, start, start + k)]


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 2.1.3.2); ValueError if the proof has the wrong shape."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ValueError("inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ValueError("inclusion proof is too short")
    return r


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """True if ``proof`` shows ``leaf`` at ``index`` in the tree of ``size`` with head ``root``."""
    try:
        return root_from_inclusion(index, size, leaf, proof) == root
    except ValueError:
        return False


def verify_consistency(old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """True if the tree of size ``new`` extends the tree of size ``old`` (RFC 9162 2.1.4.2)."""
    if not 0 <= old <= new:
        return False
    if old == new:
        return not proof and old_root == new_root
    if old == 0:
        return not proof and old_root == EMPTY_ROOT
    path = list(proof)
    if old & (old - 1) == 0:  # old is a power of two: its root is the first node of the path
        path.insert(0, old_root)
    if not path:
        return False
    fn, sn = old - 1, new - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old_root and sr == new_root
