"""Segment compression: none, gzip or zstd. Readers pick the codec from the object's name, so any mix reads."""

from __future__ import annotations

import gzip
from typing import Literal

Compression = Literal["none", "gzip", "zstd"]
EXTENSIONS: dict[str, str] = {"none": "", "gzip": ".gz", "zstd": ".zst"}


def _zstd():  # type: ignore[no-untyped-def]
    try:
        import zstandard
    except ImportError as e:  # optional: only needed when configured or when reading .zst segments
        raise RuntimeError("zstd compression needs the 'zstandard' package (pip install zstandard)") from e
    return zstandard


def compress(data: bytes, kind: Compression) -> bytes:
    """Compress a segment for storage."""
    if kind == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)  # mtime=0: the same segment always gives the same bytes
    if kind == "zstd":
        return _zstd().ZstdCompressor(level=3).compress(data)
    return data


def decompress(data: bytes, name: str) -> bytes:
    """Undo ``compress``, by the stored name's extension."""
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zst"):
        return _zstd().ZstdDecompressor().decompressobj().decompress(data)
    return data
