#!/usr/bin/env python3
"""Verify an mcp-extproc session bundle without mcp-extproc: the standard library and ``cryptography`` only.

    python verify_bundle.py bundle.json [--public-key published.pub] [--allow-open] [--json]

Written from docs/record-format.md, not from the processor's code, as a second implementation: it must reach the
same findings as ``mcp-extproc sessions verify --bundle`` (tests/vectors/record-format holds the cases both are
checked on). Exit 0: intact; 1: findings (or a stream without its final manifest, unless --allow-open); 2: the file
is not a bundle. What it does not check: tool-definition fingerprints (RFC 8785), see the format document.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import hashlib
import itertools
import json
import re
import sys
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

FORMAT, VERSION = "mcp-extproc/session-bundle", 1
GENESIS = "0" * 64
MANIFEST_FIELDS = {  # name -> default (None: required)
    "session": None, "writer": None, "segment": None, "first": None, "last": None, "count": None, "size": None,
    "sha256": None, "head": None, "prev_manifest": None, "final": False, "open": [], "created": 0.0,
    "sealed_by": "", "v": 1, "key_id": "", "sig": "",
}  # fmt: skip
DIGEST_FIELDS = {
    "writer": None, "number": None, "start": None, "end": None, "prev": None, "segments": [], "final": False,
    "closed_by": "", "v": 1, "key_id": "", "sig": "",
}  # fmt: skip
LISTED_FIELDS = ["session", "stream", "segment", "sha256", "first", "last", "final"]
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class NotABundle(ValueError):
    pass


def safe_key(name: str) -> str:
    """A session or writer id as stored: as-is when harmless, else ``h-`` + 40 hex digits of its SHA-256."""
    if _SAFE.match(name) and ".." not in name:
        return name
    return "h-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def canonical_manifest(doc: dict[str, Any]) -> bytes:
    """Manifests: sorted keys, no spaces, non-ASCII as \\u escapes (Python's json.dumps(sort_keys=True))."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def canonical_digest(doc: dict[str, Any]) -> bytes:
    """Digests: sorted keys, no spaces, UTF-8 kept (the format document: identical to manifests' form except for
    non-ASCII, for every value a digest holds in the range of times)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def loads(raw: bytes) -> Any:
    return json.loads(raw)


def with_defaults(doc: Any, fields: dict[str, Any], what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ValueError(f"{what} is not a JSON object")
    missing = [k for k, default in fields.items() if default is None and k not in doc]
    if missing:
        raise ValueError(f"{what} is missing fields: {missing}")
    return {k: doc[k] if k in doc else (list(d) if isinstance(d, list) else d) for k, d in fields.items()}


def check_signed(sig: Any, kid: Any, signed: bytes, public: Ed25519PublicKey, what: str) -> str | None:
    if not sig:
        return "unsigned"
    if kid and kid != key_id(public):
        return f"signed by another key ({kid})"
    try:
        public.verify(base64.b64decode(sig), signed)
    except (InvalidSignature, ValueError, TypeError):
        return f"signature does not match its content ({what} edited)"
    return None


def unsigned_part(doc: dict[str, Any], canonical: Any) -> bytes:
    return canonical({k: v for k, v in doc.items() if k != "sig"})


class Report:
    def __init__(self) -> None:
        self.findings: list[str] = []
        self.open: list[str] = []
        self.notes: list[str] = []
        self.events = 0


def problem(writer: str, line: int, message: str, segment: int | None = None) -> str:
    return f"{writer}: {f'segment {segment}' if segment is not None else f'line {line}'}: {message}"


# --- one stream: the hash chain, then the manifests ------------------------------------------------------------


def read_lines(data: bytes) -> tuple[list[tuple[int, bytes, Any, str]], bool]:
    pieces = data.split(b"\n")
    terminated = pieces[-1] == b""
    if terminated:
        pieces.pop()
    lines = []
    for n, raw in enumerate(pieces, start=1):
        try:
            ev = loads(raw)
        except ValueError:
            ev = None
        lines.append((n, raw, ev if isinstance(ev, dict) else None, hashlib.sha256(raw).hexdigest()))
    return lines, terminated


def seq_of(ev: Any) -> int | None:
    seq = ev.get("seq") if ev is not None else None
    return seq if isinstance(seq, int) else None


def check_chain(writer: str, lines: list[tuple[int, bytes, Any, str]], terminated: bool, out: Report) -> None:
    if not terminated:
        out.findings.append(problem(writer, len(lines), "last line is not terminated (truncated write)"))
    prev = GENESIS
    for number, _raw, ev, digest in lines:
        if ev is None:
            out.findings.append(problem(writer, number, "not valid JSON (edited or corrupted)"))
        else:
            if ev.get("seq") != number - 1:
                why = f"sequence {ev.get('seq')!r}, expected {number - 1} (line removed or reordered)"
                out.findings.append(problem(writer, number, why))
            if ev.get("prev") != prev:
                why = "hash chain broken: previous line was altered, removed or reordered"
                out.findings.append(problem(writer, number, why))
        prev = digest


def check_manifests(
    key: str, writer: str, raw_manifests: list[bytes], lines: list[tuple[int, bytes, Any, str]],
    public: Ed25519PublicKey | None, out: Report,
) -> None:  # fmt: skip
    bad = out.findings.append
    manifests: list[dict[str, Any]] = []
    for i, raw in enumerate(raw_manifests):
        try:
            manifests.append(with_defaults(loads(raw), MANIFEST_FIELDS, "manifest"))
        except ValueError as e:
            bad(problem(writer, 0, f"manifest unreadable (edited or corrupted): {e}", i))
    if not manifests:
        if lines:
            bad(problem(writer, 1, f"{len(lines)} lines and no manifest: unsigned data"))
        return
    signed = [m for m in manifests if m["sig"]]
    if public is not None:
        for i, m in enumerate(manifests):
            why = check_signed(m["sig"], m["key_id"], unsigned_part(m, canonical_manifest), public, "manifest")
            if why is not None:
                bad(problem(writer, 0, f"manifest {why}", i))
    elif signed and len(signed) != len(manifests):
        for i, m in enumerate(manifests):
            if not m["sig"]:
                bad(problem(writer, 0, "manifest unsigned while the others are signed", i))
    elif signed:
        out.notes.append(f"{writer}: manifests are signed but not checked (pass --public-key)")
    else:
        out.notes.append(f"{writer}: manifests are not signed; integrity rests on hashes only")
    prev_digest = GENESIS
    for i, m in enumerate(manifests):
        if safe_key(m["session"]) != key:
            bad(problem(writer, 0, f"manifest belongs to session {m['session']!r} (spliced from another session)", i))
        if safe_key(m["writer"]) != writer:
            bad(problem(writer, 0, f"manifest belongs to writer {m['writer']!r} (spliced from another stream)", i))
        if m["segment"] != i:
            why = f"manifest of segment {m['segment']} found here: a segment is missing or reordered"
            bad(problem(writer, 0, why, i))
        elif m["prev_manifest"] != prev_digest:
            bad(problem(writer, 0, "does not follow the previous segment's manifest (segment removed or reordered)", i))
        if i and manifests[i - 1]["final"]:
            bad(problem(writer, 0, "manifest after the stream's final manifest (appended later)", i))
        prev_digest = hashlib.sha256(canonical_manifest(m)).hexdigest()
    check_segments(key, writer, manifests, lines, out)
    if not manifests[-1]["final"]:
        out.open.append(
            f"{writer}: no final manifest after segment {len(manifests) - 1}: its writer is still running or died "
            "before the completer ran, or its last segments were removed"
        )


def locator(manifests: list[dict[str, Any]]) -> Any:
    """seq -> the first segment, in stored order, whose first..last holds it (bisection when the ranges are disjoint
    integers, as written by the recorder; a scan otherwise, which gives the same answer)."""
    ranges = [(m["first"], m["last"], i) for i, m in enumerate(manifests)]

    def scan(seq: int) -> int | None:
        return next((i for first, last, i in ranges if first <= seq <= last), None)

    if not all(type(first) is int and type(last) is int for first, last, _ in ranges):
        return scan
    ordered = sorted(r for r in ranges if r[0] <= r[1])
    if any(a[1] >= b[0] for a, b in itertools.pairwise(ordered)):
        return scan
    firsts = [r[0] for r in ordered]

    def find(seq: int) -> int | None:
        k = bisect.bisect_right(firsts, seq) - 1
        return ordered[k][2] if k >= 0 and seq <= ordered[k][1] else None

    return find


def check_segments(
    key: str, writer: str, manifests: list[dict[str, Any]], lines: list[tuple[int, bytes, Any, str]], out: Report
) -> None:
    bad = out.findings.append
    segment_of = locator(manifests)
    groups: dict[int, list[tuple[int, bytes, Any, str]]] = {i: [] for i in range(len(manifests))}
    uncovered: list[int] = []
    current: int | None = None
    for ln in lines:
        number, _raw, ev, _digest = ln
        seq = seq_of(ev)
        session = ev.get("session") if seq is not None else None
        if session is not None and safe_key(session) != key:
            bad(problem(writer, number, f"event of session {session!r} (spliced from another session)"))
            continue
        if seq is not None:
            current = segment_of(seq)
        if current is None:
            uncovered.append(number)
        else:
            groups[current].append(ln)
    if uncovered:
        bad(problem(writer, uncovered[0], f"{len(uncovered)} lines not covered by any signed manifest (unsigned data)"))
    last_position = 0
    for i, m in enumerate(manifests):
        got = groups[i]
        seqs = [s for s in (seq_of(ev) for _, _, ev, _ in got) if s is not None]
        want = list(range(m["first"], m["last"] + 1))
        if m["count"] and not got:
            bad(problem(writer, 0, f"missing: events {m['first']}..{m['last']} are gone (segment deleted)", i))
            continue
        if got and got[0][0] < last_position:
            bad(problem(writer, got[0][0], f"stored before segment {i - 1} (segments reordered)", i))
        last_position = max(last_position, got[-1][0] if got else 0)
        if seqs != want:
            if seqs == want[: len(seqs)]:
                end = seqs[-1] if seqs else m["first"] - 1
                bad(problem(writer, 0, f"truncated: ends at event {end}, its manifest says {m['last']}", i))
            else:
                bad(problem(writer, 0, f"events {seqs[:5]}… do not match its manifest's {m['first']}..{m['last']}", i))
            continue
        if hashlib.sha256(b"".join(raw + b"\n" for _, raw, _, _ in got)).hexdigest() != m["sha256"]:
            bad(problem(writer, 0, "content differs from its signed manifest (edited)", i))


# --- the digest chains: what was stored, signed by each writer -------------------------------------------------


def walk_digests(writer: str, raw: dict[int, bytes], public: Ed25519PublicKey | None, out: Report) -> list[Any]:
    bad = out.findings.append
    parsed: dict[int, dict[str, Any]] = {}
    for n, data in sorted(raw.items()):
        try:
            doc = with_defaults(loads(data), DIGEST_FIELDS, "digest")
            if not isinstance(doc["segments"], list) or any(
                not isinstance(s, dict) or set(s) - set(LISTED_FIELDS) or set(LISTED_FIELDS[:6]) - set(s)
                for s in doc["segments"]
            ):
                raise ValueError("digest fields are wrong")
            doc["segments"] = [{"final": False, **s} for s in doc["segments"]]
            parsed[n] = doc
        except ValueError as e:
            bad(f"digest {n} of writer {writer}: unreadable (edited or corrupted): {e}")
    if not parsed:
        return []
    walked, signed, unsigned = [], 0, 0
    for n in range(0, max(raw) + 1):
        where = f"digest {n} of writer {writer}"
        if n not in raw:
            gap = (
                "the chain does not start at digest 0" if n == 0 else f"the chain jumps from {n - 1} to the next digest"
            )
            bad(f"{where}: missing (deleted): {gap}")
            continue
        d = parsed.get(n)
        if d is None:
            continue
        if safe_key(d["writer"]) != writer or d["number"] != n:
            bad(f"{where}: says it is digest {d['number']} of writer {d['writer']!r} (copied or renamed)")
        expected = GENESIS if n == 0 else hashlib.sha256(raw[n - 1]).hexdigest() if n - 1 in raw else None
        if expected is not None and d["prev"] != expected:
            bad(f"{where}: does not follow digest {n - 1} (chain broken: a digest was edited, replaced or reordered)")
        if n and (prev := parsed.get(n - 1)) is not None and prev["final"]:
            bad(f"{where}: follows the writer's closing digest (appended later)")
        if public is not None:
            why = check_signed(d["sig"], d["key_id"], unsigned_part(d, canonical_digest), public, "digest")
            if why is not None:
                bad(f"{where}: {why}")
        signed, unsigned = signed + bool(d["sig"]), unsigned + (not d["sig"])
        walked.append((where, d))
    if public is None and signed and unsigned:
        bad(f"writer {writer}: {unsigned} digests unsigned while the others are signed")
    return walked


def check_listing(
    key: str, streams: dict[str, tuple[bytes, list[bytes]]], digests: dict[str, dict[int, bytes]],
    public: Ed25519PublicKey | None, out: Report,
) -> None:  # fmt: skip
    bad = out.findings.append
    listed: dict[str, dict[int, tuple[dict[str, Any], str]]] = {}
    count = 0
    for writer, chain in sorted(digests.items()):
        for where, d in walk_digests(writer, chain, public, out):
            count += 1
            for s in d["segments"]:
                if safe_key(s["session"]) == key:
                    listed.setdefault(s["stream"], {})[s["segment"]] = (s, where)
    if count == 0:
        bad("no digests: nothing shows which segments were stored")
    if not listed:
        return
    session = next(s["session"] for segs in listed.values() for s, _ in segs.values())
    if not streams:
        total = sum(len(s) for s in listed.values())
        first = sorted({w for s in listed.values() for _, w in s.values()})[0]
        bad(f"session {session!r} missing (deleted): {total} segments in {len(listed)} streams listed by {first}")
        return
    for stream, segments in sorted(listed.items()):
        numbers = sorted(segments)
        data = streams.get(safe_key(stream))
        if data is None:
            bad(
                f"session {session!r}: stream {stream} missing (deleted): segments {numbers[0]}..{numbers[-1]} "
                f"listed by {segments[numbers[0]][1]}"
            )
            continue
        manifests: dict[int, dict[str, Any]] = {}
        for raw in data[1]:
            try:
                m = with_defaults(loads(raw), MANIFEST_FIELDS, "manifest")
            except ValueError:
                continue
            manifests.setdefault(m["segment"], m)
        for n in numbers:
            entry, where = segments[n]
            m = manifests.get(n)
            if m is None:
                bad(f"session {session!r}: stream {stream}: segment {n} missing (deleted), listed by {where}")
            elif m["sha256"] != entry["sha256"] or (m["first"], m["last"]) != (entry["first"], entry["last"]):
                bad(f"session {session!r}: stream {stream}: segment {n} differs from {where} (replaced)")


# --- the bundle ----------------------------------------------------------------------------------------------------


def b64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise NotABundle(f"{where}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise NotABundle(f"{where}: not base64: {e}") from None


def read_bundle(doc: Any) -> tuple[str, dict[str, tuple[bytes, list[bytes]]], dict[str, dict[int, bytes]], Any]:
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise NotABundle(f"not a session bundle (format is not {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise NotABundle(f"bundle version {doc.get('version')!r} is not supported (this reads {VERSION})")
    key = doc.get("session")
    if not isinstance(key, str) or safe_key(key) != key:
        raise NotABundle("bundle 'session' must be a stored session key")
    streams: dict[str, tuple[bytes, list[bytes]]] = {}
    for i, st in enumerate(doc.get("streams") if isinstance(doc.get("streams"), list) else []):
        writer = st.get("writer") if isinstance(st, dict) else None
        if not isinstance(writer, str) or safe_key(writer) != writer or writer in streams:
            raise NotABundle(f"streams[{i}].writer must be a distinct stored writer key")
        if not isinstance(st.get("manifests"), list):
            raise NotABundle(f"streams[{i}].manifests must be a list")
        manifests = [b64(m, f"streams[{i}].manifests[{j}]") for j, m in enumerate(st["manifests"])]
        streams[writer] = (b64(st.get("data"), f"streams[{i}].data"), manifests)
    digests: dict[str, dict[int, bytes]] = {}
    for i, d in enumerate(doc.get("digests") if isinstance(doc.get("digests"), list) else []):
        writer, number = (d.get("writer"), d.get("number")) if isinstance(d, dict) else (None, None)
        if not isinstance(writer, str) or not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise NotABundle(f"digests[{i}] needs a writer and a number")
        if number in digests.get(writer, {}):
            raise NotABundle(f"digests[{i}]: digest {number} of writer {writer!r} appears twice")
        digests.setdefault(writer, {})[number] = b64(d.get("data"), f"digests[{i}].data")
    for name in ("streams", "digests"):
        if not isinstance(doc.get(name), list):
            raise NotABundle(f"bundle {name!r} must be a list")
    embedded = None
    if doc.get("public_key") is not None:
        raw = b64((doc["public_key"] or {}).get("ed25519"), "public_key.ed25519")
        if len(raw) != 32:
            raise NotABundle("public_key.ed25519 must be 32 bytes")
        embedded = Ed25519PublicKey.from_public_bytes(raw)
    return key, streams, digests, embedded


def verify(doc: Any, public: Ed25519PublicKey | None) -> Report:
    key, streams, digests, embedded = read_bundle(doc)
    out = Report()
    if public is None and embedded is not None:
        public = embedded
        out.notes.append(
            f"signatures checked against the key inside the bundle ({key_id(public)}): compare it with the published "
            "key, or pass --public-key"
        )
    if not streams:
        out.findings.append("the bundle holds no stream")
    for writer, (data, manifests) in sorted(streams.items()):
        lines, terminated = read_lines(data)
        out.events += sum(ev is not None for _, _, ev, _ in lines)
        check_chain(writer, lines, terminated, out)
        check_manifests(key, writer, manifests, lines, public, out)
    check_listing(key, streams, digests, public, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Verify an mcp-extproc session bundle (no mcp-extproc needed).")
    parser.add_argument("bundle")
    parser.add_argument("--public-key", help="the published Ed25519 public key (PEM)")
    parser.add_argument("--allow-open", action="store_true", help="a stream without its final manifest is no failure")
    parser.add_argument("--json", action="store_true", help="findings as JSON")
    args = parser.parse_args(argv)
    public = None
    if args.public_key:
        with open(args.public_key, "rb") as f:
            loaded = serialization.load_pem_public_key(f.read())
        if not isinstance(loaded, Ed25519PublicKey):
            print(f"{args.public_key} is not an Ed25519 public key", file=sys.stderr)
            return 2
        public = loaded
    try:
        with open(args.bundle, "rb") as f:
            doc = json.loads(f.read())
        report = verify(doc, public)
    except (OSError, ValueError) as e:
        print(f"{args.bundle}: {e}", file=sys.stderr)
        return 2
    ok = not report.findings and (args.allow_open or not report.open)
    if args.json:
        print(json.dumps({"findings": sorted(report.findings), "open": sorted(report.open), "ok": ok}, indent=2))
    else:
        for note in report.notes:
            print(f"NOTE {note}")
        for why in report.open:
            print(f"{'OPEN' if args.allow_open else 'FAIL'} {why}")
        for finding in report.findings:
            print(f"FAIL {finding}")
        if ok:
            print(f"OK: {report.events} events; every chain, manifest and digest intact")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
