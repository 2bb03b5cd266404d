"""Segment compression: each codec round-trips, readers pick it by name, the same segment gives the same bytes."""

from __future__ import annotations

import pytest

from extproc.recording.store.codec import EXTENSIONS, Compression, compress, decompress

DATA = b'{"seq":0,"prev":"00","type":"mcp.request"}\n' * 200


@pytest.mark.parametrize("kind", ["none", "gzip", "zstd"])
def test_round_trip_by_extension(kind: Compression) -> None:
    packed = compress(DATA, kind)

    assert decompress(packed, f"00000001.jsonl{EXTENSIONS[kind]}") == DATA
    assert compress(DATA, kind) == packed  # deterministic: a retried upload stores identical bytes
    if kind != "none":
        assert len(packed) < len(DATA) // 10


def test_a_plain_name_is_read_as_is() -> None:
    assert decompress(b"abc", "00000001.jsonl") == b"abc"


def test_a_corrupt_gzip_object_is_an_error_not_garbage() -> None:
    with pytest.raises(OSError):
        decompress(b"not gzip", "00000001.jsonl.gz")
