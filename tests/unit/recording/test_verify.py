"""Segment checks scale with the session: lines are placed in their segment by bisection, not a scan per line."""

from __future__ import annotations

import hashlib
import time

from extproc.recording import chain
from extproc.recording.chain import event_line
from extproc.recording.events import McpRequest
from extproc.recording.manifest import GENESIS, Manifest
from extproc.recording.verify import check_parsed


def _long_stream(segments: int, per_segment: int) -> tuple[bytes, list[bytes]]:
    data: list[bytes] = []
    manifests: list[bytes] = []
    seq, prev, link = 0, GENESIS, GENESIS
    for number in range(segments):
        first, seg = seq, b""
        for _ in range(per_segment):
            line = event_line(seq, prev, McpRequest(session="s", exchange=f"e{number}", time=1.0, size=seq))
            prev, seq, seg = hashlib.sha256(line).hexdigest(), seq + 1, seg + line + b"\n"
        m = Manifest("s", "w", number, first, seq - 1, seq - first, len(seg), hashlib.sha256(seg).hexdigest(), prev,
                     link, final=number == segments - 1)  # fmt: skip
        raw = m.to_bytes()
        link = hashlib.sha256(raw).hexdigest()
        data.append(seg)
        manifests.append(raw)
    return b"".join(data), manifests


def test_a_session_of_thousands_of_segments_is_checked_in_linear_time() -> None:
    data, manifests = _long_stream(12000, 1)
    parsed = chain.read(data)
    started = time.process_time()
    result = check_parsed("s", "w", manifests, parsed, None)
    spent = time.process_time() - started
    assert result.problems == [] and result.final and result.segments == 12000
    # A scan of the segments per line was 72 million steps here (~8 s of CPU); bisection takes ~0.2 s.
    assert spent < 2.0, spent


def test_overlapping_ranges_of_edited_manifests_keep_the_first_in_stored_order() -> None:
    data, manifests = _long_stream(3, 2)
    edited = Manifest.from_bytes(manifests[1])
    edited.first = 0  # segment 1 now claims segment 0's lines as well
    result = check_parsed("s", "w", [manifests[0], edited.to_bytes(), manifests[2]], chain.read(data), None)
    assert any("events [2, 3]… do not match its manifest's 0..3" in str(p) for p in result.problems), result.problems
