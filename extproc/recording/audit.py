"""Store-wide verification: walk every writer's digest chain and check the store holds what the digests list.

Names every missing session, stream and segment, every digest that is missing, edited, unsigned or off its
chain, and every problem inside the listed sessions (chains, manifests, signatures: ``replay.load_session``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.recording.digest import Digest, Listed, digest_hash
from extproc.recording.manifest import GENESIS, Manifest, check_signed
from extproc.recording.replay import load_session
from extproc.recording.store import Store, safe_key


@dataclass(slots=True)
class Audit:
    findings: list[str] = field(default_factory=list)  # evidence missing or altered: exit 1
    notes: list[str] = field(default_factory=list)  # what was not or could not be checked
    digests: int = 0
    segments: int = 0
    sessions: int = 0


@dataclass(frozen=True, slots=True)
class _Where:
    writer: str
    number: int

    def __str__(self) -> str:
        return f"digest {self.number} of writer {self.writer}"


def audit(store: Store, public_key: Ed25519PublicKey | None = None, since: float | None = None) -> Audit:
    """Check the digest chains, then every session, stream and segment they list."""
    result = Audit()
    listed: dict[str, dict[str, dict[int, tuple[Listed, _Where]]]] = defaultdict(lambda: defaultdict(dict))
    for writer, raw_digests in sorted(store.read_digests().items()):
        for where, digest in _walk_chain(writer, raw_digests, public_key, since, result):
            for s in digest.segments:
                listed[s.session][s.stream][s.segment] = (s, where)
    if result.digests == 0:
        result.findings.append("no digests in the store" + (" since then" if since is not None else ""))
    for session, streams in sorted(listed.items()):
        _check_session(store, session, streams, public_key, result)
    if since is None:
        _unlisted(store, listed, result)
    return result


def audit_session(store: Store, key: str, public_key: Ed25519PublicKey | None = None) -> Audit:
    """The digest chains' word on one session (an exported bundle holds it and its writers' digests): the chains
    intact, and every segment of the session they list present and unchanged. The session's own chains and
    manifests are ``load_session``'s to check."""
    result = Audit()
    listed: dict[str, dict[int, tuple[Listed, _Where]]] = defaultdict(dict)
    for writer, raw_digests in sorted(store.read_digests().items()):
        for where, digest in _walk_chain(writer, raw_digests, public_key, None, result):
            for s in digest.segments:
                if safe_key(s.session) == key:
                    listed[s.stream][s.segment] = (s, where)
    if result.digests == 0:
        result.findings.append("no digests: nothing shows which segments were stored")
    session = next((s.session for segs in listed.values() for s, _ in segs.values()), key)
    if listed:
        _check_session(store, session, listed, public_key, result, load=False)
    for stream, data in store.read_session(key).items():
        extra = len(data.manifests) - len({n for st, segs in listed.items() if safe_key(st) == stream for n in segs})
        if extra > 0:
            result.notes.append(
                f"session {key}: stream {stream}: {extra} stored segments not listed in any digest yet "
                "(written since its writer's last digest, or that writer's digests were removed)"
            )
    return result


def _walk_chain(
    writer: str,
    raw: dict[int, bytes],
    public_key: Ed25519PublicKey | None,
    since: float | None,
    result: Audit,
) -> list[tuple[_Where, Digest]]:
    bad = result.findings.append
    parsed: dict[int, Digest] = {}
    for n, data in sorted(raw.items()):
        try:
            parsed[n] = Digest.from_bytes(data)
        except ValueError as e:
            bad(f"{_Where(writer, n)}: unreadable (edited or corrupted): {e}")
    window = [n for n, d in parsed.items() if since is None or d.end >= since]
    if not window:
        return []
    out = []
    unsigned = signed = 0
    # A whole chain starts at digest 0: a deleted first digest is a gap like any other (a --since window starts at
    # its first digest, since the ones before it are not asked about).
    for n in range(0 if since is None else window[0], max(raw) + 1):
        where = _Where(writer, n)
        if n not in raw:
            gap = (
                "the chain does not start at digest 0" if n == 0 else f"the chain jumps from {n - 1} to the next digest"
            )
            bad(f"{where}: missing (deleted): {gap}")
            continue
        d = parsed.get(n)
        if d is None:
            continue
        result.digests += 1
        if safe_key(d.writer) != writer or d.number != n:
            bad(f"{where}: says it is digest {d.number} of writer {d.writer!r} (copied or renamed)")
        expected = GENESIS if n == 0 else digest_hash(raw[n - 1]) if n - 1 in raw else None
        if expected is not None and d.prev != expected:
            bad(f"{where}: does not follow digest {n - 1} (chain broken: a digest was edited, replaced or reordered)")
        if n and (prev := parsed.get(n - 1)) is not None and prev.final:
            bad(f"{where}: follows the writer's closing digest (appended later)")
        if public_key is not None:
            why = check_signed(d.sig, d.key_id, d.signed_part(), public_key, "digest")
            if why is not None:
                bad(f"{where}: {why}")
        signed, unsigned = signed + bool(d.sig), unsigned + (not d.sig)
        out.append((where, d))
    if public_key is None and signed and unsigned:
        bad(f"writer {writer}: {unsigned} digests unsigned while the others are signed")
    elif public_key is None and signed:
        result.notes.append(f"writer {writer}: digests are signed but not checked (pass --public-key)")
    elif public_key is None:
        result.notes.append(f"writer {writer}: digests are not signed; integrity rests on hashes only")
    last = parsed.get(max(raw))
    if last is not None and not last.final:
        result.notes.append(
            f"writer {writer}: no closing digest after digest {max(raw)} (the writer is running or was killed; "
            "a live writer adds one per interval)"
        )
    return out


def _check_session(
    store: Store,
    session: str,
    streams: dict[str, dict[int, tuple[Listed, _Where]]],
    public_key: Ed25519PublicKey | None,
    result: Audit,
    load: bool = True,
) -> None:
    bad = result.findings.append
    result.sessions += 1
    key = safe_key(session)
    stored = store.read_session(key)
    if not stored:
        count = sum(len(s) for s in streams.values())
        first = sorted({str(w) for s in streams.values() for _, w in s.values()})[0]
        bad(f"session {session!r} missing (deleted): {count} segments in {len(streams)} streams listed by {first}")
        return
    for stream, segments in sorted(streams.items()):
        result.segments += len(segments)
        data = stored.get(safe_key(stream))
        numbers = sorted(segments)
        if data is None:
            bad(
                f"session {session!r}: stream {stream} missing (deleted): segments {numbers[0]}..{numbers[-1]} "
                f"listed by {segments[numbers[0]][1]}"
            )
            continue
        manifests: dict[int, Manifest] = {}
        for raw in data.manifests:
            try:
                parsed = Manifest.from_bytes(raw)
            except ValueError:
                continue  # named by the session check below
            manifests.setdefault(parsed.segment, parsed)
        for n in numbers:
            entry, where = segments[n]
            m = manifests.get(n)
            if m is None:
                bad(f"session {session!r}: stream {stream}: segment {n} missing (deleted), listed by {where}")
            elif m.sha256 != entry.sha256 or (m.first, m.last) != (entry.first, entry.last):
                bad(f"session {session!r}: stream {stream}: segment {n} differs from {where} (replaced)")
    if not load:
        return
    try:
        loaded = load_session(store, key, public_key)
    except KeyError:
        return
    for p in loaded.problems:
        bad(f"session {session!r}: {p}")


def _unlisted(store: Store, listed: dict[str, dict[str, dict[int, tuple[Listed, _Where]]]], result: Audit) -> None:
    """Stored segments no digest names yet: the newest ones of live writers, or ones whose digests are gone."""
    by_key = {safe_key(s): {safe_key(st): set(segs) for st, segs in streams.items()} for s, streams in listed.items()}
    for key in store.list_sessions():
        for stream, data in store.read_session(key).items():
            have = by_key.get(key, {}).get(stream, set())
            extra = len(data.manifests) - len(have)
            if extra > 0:
                result.notes.append(
                    f"session {key}: stream {stream}: {extra} stored segments not listed in any digest yet "
                    "(written since its writer's last digest, or that writer's digests were removed)"
                )
