"""Segment-level verification: the signed manifests against the stored lines of one writer stream.

The hash chain (``replay.verify_stream``) says *that* a line was altered; the manifests say *which segment*
and *how*: edited, deleted, reordered, truncated, spliced in from another session, or never signed. The same
checks run for every backend, because every store returns a stream as its lines plus its manifests.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.recording import chain
from extproc.recording.chain import Problem
from extproc.recording.manifest import GENESIS, Manifest, check_signature
from extproc.recording.store import StreamData, safe_key


@dataclass(slots=True)
class StreamCheck:
    """What the manifests say about one stream."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    final: bool = False
    segments: int = 0
    unfinished: str | None = None  # why the stream has no final manifest (live, or its end cut off)


def check_stream(key: str, writer: str, stream: StreamData, public_key: Ed25519PublicKey | None = None) -> StreamCheck:
    """Check manifests (signature, identity, continuity) and the lines each one covers."""
    return check_parsed(key, writer, stream.manifests, chain.read(stream.data), public_key)


def check_parsed(
    key: str, writer: str, raw_manifests: list[bytes], parsed: chain.Stream, public_key: Ed25519PublicKey | None
) -> StreamCheck:
    """``check_stream`` on a stream already read by ``chain.read``."""
    result = StreamCheck()
    bad = result.problems.append
    manifests: list[Manifest] = []
    for i, raw in enumerate(raw_manifests):
        try:
            manifests.append(Manifest.from_bytes(raw))
        except ValueError as e:
            bad(Problem(writer, 0, f"manifest unreadable (edited or corrupted): {e}", i))
    result.segments = len(manifests)
    lines = parsed.lines
    if not manifests:
        if lines:
            bad(Problem(writer, 1, f"{len(lines)} lines and no manifest: unsigned data"))
        return result

    _check_signatures(writer, manifests, public_key, result)
    prev_digest = GENESIS
    for i, m in enumerate(manifests):
        if safe_key(m.session) != key:
            bad(Problem(writer, 0, f"manifest belongs to session {m.session!r} (spliced from another session)", i))
        if safe_key(m.writer) != writer:
            bad(Problem(writer, 0, f"manifest belongs to writer {m.writer!r} (spliced from another stream)", i))
        if m.segment != i:
            bad(Problem(writer, 0, f"manifest of segment {m.segment} found here: a segment is missing or reordered", i))
        elif m.prev_manifest != prev_digest:
            bad(Problem(writer, 0, "does not follow the previous segment's manifest (segment removed or reordered)", i))
        if i and manifests[i - 1].final:
            bad(Problem(writer, 0, "manifest after the stream's final manifest (appended later)", i))
        prev_digest = m.digest()
    result.final = manifests[-1].final

    _check_lines(key, writer, manifests, lines, result)
    if not result.final:
        result.unfinished = (
            f"{writer}: no final manifest after segment {len(manifests) - 1}: its writer is still running or died "
            "before the completer ran, or its last segments were removed"
        )
    return result


def _check_signatures(
    writer: str, manifests: list[Manifest], public_key: Ed25519PublicKey | None, result: StreamCheck
) -> None:
    signed = [m for m in manifests if m.sig]
    if public_key is not None:
        for i, m in enumerate(manifests):
            why = check_signature(m, public_key)
            if why is not None:
                result.problems.append(Problem(writer, 0, f"manifest {why}", i))
    elif signed and len(signed) != len(manifests):
        for i, m in enumerate(manifests):
            if not m.sig:
                result.problems.append(Problem(writer, 0, "manifest unsigned while the others are signed", i))
    elif signed:
        result.notes.append(f"{writer}: manifests are signed but not checked (pass --public-key)")
    else:
        result.notes.append(f"{writer}: manifests are not signed; integrity rests on hashes only")


def _locator(manifests: list[Manifest]) -> Callable[[int], int | None]:
    """seq -> the first segment (in stored order) whose ``first..last`` holds it. A bisection when the ranges are
    disjoint, as every stream the recorder wrote has them (a long session is then O(lines log segments), not
    O(lines x segments)); a scan in stored order otherwise, which is what the bisection answers too."""
    ranges = [(m.first, m.last, i) for i, m in enumerate(manifests)]

    def scan(seq: int) -> int | None:
        return next((i for first, last, i in ranges if first <= seq <= last), None)

    if not all(type(first) is int and type(last) is int for first, last, _ in ranges):
        return scan  # an edited manifest: compared exactly as written (bool and float too)
    ordered = sorted(r for r in ranges if r[0] <= r[1])  # an empty segment holds no line
    if any(a[1] >= b[0] for a, b in pairwise(ordered)):
        return scan  # overlapping ranges (edited manifests): the first in stored order wins
    firsts = [first for first, _, _ in ordered]

    def find(seq: int) -> int | None:
        k = bisect_right(firsts, seq) - 1
        return ordered[k][2] if k >= 0 and seq <= ordered[k][1] else None

    return find


def _check_lines(
    key: str, writer: str, manifests: list[Manifest], lines: list[chain.Line], result: StreamCheck
) -> None:
    """Assign every line to the segment its ``seq`` falls in, then compare each segment with its manifest."""
    bad = result.problems.append
    segment_of = _locator(manifests)
    groups: dict[int, list[chain.Line]] = {i: [] for i in range(len(manifests))}
    unsigned: list[chain.Line] = []
    current: int | None = None
    for ln in lines:
        if ln.session is not None and safe_key(ln.session) != key:
            bad(Problem(writer, ln.number, f"event of session {ln.session!r} (spliced from another session)"))
            continue
        seq = ln.seq
        if seq is not None:
            current = segment_of(seq)
        if current is None:
            unsigned.append(ln)
        else:
            groups[current].append(ln)
    if unsigned:
        bad(
            Problem(
                writer,
                unsigned[0].number,
                f"{len(unsigned)} lines not covered by any signed manifest (unsigned data)",
            )
        )
    last_position = 0
    for i, m in enumerate(manifests):
        got = groups[i]
        seqs = [ln.seq for ln in got if ln.seq is not None]
        want = list(range(m.first, m.last + 1))
        if m.count and not got:
            bad(Problem(writer, 0, f"missing: events {m.first}..{m.last} are gone (segment deleted)", i))
            continue
        if got and got[0].number < last_position:
            bad(Problem(writer, got[0].number, f"stored before segment {i - 1} (segments reordered)", i))
        last_position = max(last_position, got[-1].number if got else 0)
        if seqs != want:
            if seqs == want[: len(seqs)]:
                end = seqs[-1] if seqs else m.first - 1
                bad(Problem(writer, 0, f"truncated: ends at event {end}, its manifest says {m.last}", i))
            else:
                bad(Problem(writer, 0, f"events {seqs[:5]}… do not match its manifest's {m.first}..{m.last}", i))
            continue
        digest = hashlib.sha256(b"".join(ln.raw + b"\n" for ln in got)).hexdigest()
        if digest != m.sha256:
            bad(Problem(writer, 0, "content differs from its signed manifest (edited)", i))
