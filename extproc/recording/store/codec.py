"""Segment compression: none, gzip or zstd. Readers pick the codec from the object's name, so any mix reads."""

from __future__ import annotations

import gzip
from types import ModuleType
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import zstandard

Compression = Literal["none", "gzip", "zstd"]
EXTENSIONS: dict[str, str] = {"none": "", "gzip": ".gz", "zstd": ".zst"}


def _zstd() -> ModuleType:
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
        compressor: zstandard.ZstdCompressor = _zstd().ZstdCompressor(level=3)
        return compressor.compress(data)
    return data


def decompress(data: bytes, name: str) -> bytes:
    """Undo ``compress``, by the stored name's extension."""
    if name.endswith(".gz"):
        return gzip.decompress(data)
    if name.endswith(".zst"):
        decompressor: zstandard.ZstdDecompressor = _zstd().ZstdDecompressor()
        return decompressor.decompressobj().decompress(data)
    return data
