"""An exported session as one self-contained JSON file that anyone can verify without the store (docs/record-format.md).

The bundle carries the stored bytes exactly (base64: hashes and signatures cover bytes, and a re-encoded line
would no longer verify), the digest chains of every writer that listed the session, and the public key the
exporter checked against. ``verify`` reads it back through the same checks ``sessions verify`` and ``store verify``
run on a store, so the two agree by construction; docs/verifier/verify_bundle.py and the viewer's verify page are
the independent implementations.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from extproc.recording.audit import audit_session
from extproc.recording.digest import Digest
from extproc.recording.manifest import key_id
from extproc.recording.replay import load_session
from extproc.recording.store import Segment, Store, StreamData, safe_key

FORMAT = "mcp-extproc/session-bundle"
VERSION = 1


class BundleError(ValueError):
    """The file is not a bundle this version can read (named precisely; nothing is verified from it)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise BundleError(f"{where}: expected a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as e:
        raise BundleError(f"{where}: not base64: {e}") from None


def public_key_doc(public: Ed25519PublicKey) -> dict[str, str]:
    """The key as a bundle names it: its key id, its raw 32 bytes (WebCrypto imports these) and PEM."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {"key_id": key_id(public), "ed25519": _b64(raw), "pem": pem.decode()}


def _listing_writers(digests: dict[str, dict[int, bytes]], key: str) -> list[str]:
    """Writers whose digest chain names a segment of session ``key`` (their whole chain goes into the bundle)."""
    out = []
    for writer, chain in sorted(digests.items()):
        for raw in chain.values():
            try:
                digest = Digest.from_bytes(raw)
            except ValueError:
                continue  # an unreadable digest is the verifier's finding, if its chain is exported
            if any(safe_key(s.session) == key for s in digest.segments):
                out.append(writer)
                break
    return out


def export(store: Store, key: str, public: Ed25519PublicKey | None) -> dict[str, Any]:
    """The bundle of stored session ``key``: its streams, its writers' digest chains, and ``public``."""
    streams = store.read_session(key)
    if not streams:
        raise KeyError(key)
    digests = store.read_digests()
    writers = sorted(set(_listing_writers(digests, key)) | (set(streams) & set(digests)))
    return {
        "format": FORMAT,
        "version": VERSION,
        "session": key,
        "public_key": public_key_doc(public) if public is not None else None,
        "streams": [
            {"writer": w, "data": _b64(s.data), "manifests": [_b64(m) for m in s.manifests]}
            for w, s in sorted(streams.items())
        ],
        "digests": [
            {"writer": w, "number": n, "data": _b64(raw)} for w in writers for n, raw in sorted(digests[w].items())
        ],
    }


class BundleStore:
    """A bundle read back as a read-only Store, so the store checks run on it unchanged."""

    def __init__(self, doc: Any) -> None:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BundleError(f"not a session bundle (format is not {FORMAT!r})")
        if doc.get("version") != VERSION:
            raise BundleError(f"bundle version {doc.get('version')!r} is not supported (this reads {VERSION})")
        session = doc.get("session")
        if not isinstance(session, str) or safe_key(session) != session:
            raise BundleError("bundle 'session' must be a stored session key")
        self.session = session
        self.streams: dict[str, StreamData] = {}
        for i, st in enumerate(_list(doc, "streams")):
            writer = st.get("writer") if isinstance(st, dict) else None
            if not isinstance(writer, str) or safe_key(writer) != writer or writer in self.streams:
                raise BundleError(f"streams[{i}].writer must be a distinct stored writer key")
            manifests = st.get("manifests")
            if not isinstance(manifests, list):
                raise BundleError(f"streams[{i}].manifests must be a list")
            self.streams[writer] = StreamData(
                _unb64(st.get("data"), f"streams[{i}].data"),
                [_unb64(m, f"streams[{i}].manifests[{j}]") for j, m in enumerate(manifests)],
            )
        self.digests: dict[str, dict[int, bytes]] = {}
        for i, d in enumerate(_list(doc, "digests")):
            writer, number = (d.get("writer"), d.get("number")) if isinstance(d, dict) else (None, None)
            if not isinstance(writer, str) or not isinstance(number, int) or isinstance(number, bool) or number < 0:
                raise BundleError(f"digests[{i}] needs a writer and a number")
            if number in self.digests.get(writer, {}):
                raise BundleError(f"digests[{i}]: digest {number} of writer {writer!r} appears twice")
            self.digests.setdefault(writer, {})[number] = _unb64(d.get("data"), f"digests[{i}].data")
        self.public_key = _bundle_key(doc.get("public_key"))

    async def put_segment(self, segment: Segment) -> None:
        raise PermissionError("a bundle is read-only")

    async def put_digest(self, writer: str, number: int, data: bytes) -> None:
        raise PermissionError("a bundle is read-only")

    async def close(self) -> None:
        return None

    def list_sessions(self) -> list[str]:
        return [self.session]

    def read_session(self, session: str) -> dict[str, StreamData]:
        return dict(self.streams) if session == self.session else {}

    def read_digests(self) -> dict[str, dict[int, bytes]]:
        return {w: dict(sorted(c.items())) for w, c in sorted(self.digests.items())}


def _list(doc: dict[str, Any], name: str) -> list[Any]:
    value = doc.get(name)
    if not isinstance(value, list):
        raise BundleError(f"bundle {name!r} must be a list")
    return value


def _bundle_key(doc: Any) -> Ed25519PublicKey | None:
    if doc is None:
        return None
    if not isinstance(doc, dict):
        raise BundleError("bundle 'public_key' must be an object or null")
    raw = _unb64(doc.get("ed25519"), "public_key.ed25519")
    if len(raw) != 32:
        raise BundleError("public_key.ed25519 must be 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(slots=True)
class Verdict:
    """What a verifier says about a bundle: ``findings`` (tampering: fail), ``open`` (streams without a final
    manifest: fail unless allowed), ``notes`` (what was not or could not be checked)."""

    findings: list[str] = field(default_factory=list)
    open: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    events: int = 0
    key_id: str = ""  # the key signatures were checked against ("" when none)

    def ok(self, allow_open: bool = False) -> bool:
        return not self.findings and (allow_open or not self.open)

    def to_json(self) -> dict[str, Any]:
        """The comparable part (sorted), as the test vectors' expected.json holds it."""
        return {"findings": sorted(self.findings), "open": sorted(self.open)}


def verify(doc: Any, public: Ed25519PublicKey | None = None) -> Verdict:
    """Check a bundle: every chain, manifest and signature (``sessions verify``) and the digest chains' listing of
    the session (``store verify``). Signatures are checked against ``public`` (the published key), else against
    the key inside the bundle, which proves only that the bundle is consistent with itself (said in a note)."""
    store = BundleStore(doc)
    verdict = Verdict()
    key = public
    if key is None and store.public_key is not None:
        key = store.public_key
        verdict.notes.append(
            f"signatures checked against the key inside the bundle ({key_id(key)}): compare it with the published "
            "key, or pass --public-key"
        )
    elif key is not None and store.public_key is not None and key_id(store.public_key) != key_id(key):
        verdict.notes.append(f"the bundle names key {key_id(store.public_key)}, not the one given ({key_id(key)})")
    verdict.key_id = key_id(key) if key is not None else ""
    session = load_session(store, store.session, key) if store.streams else None
    if session is None:
        verdict.findings.append("the bundle holds no stream")
    else:
        verdict.events = len(session.events)
        verdict.findings.extend(str(p) for p in session.problems)
        verdict.open.extend(session.unfinished)
        verdict.notes.extend(session.notes)
    listing = audit_session(store, store.session, key)
    verdict.findings.extend(listing.findings)
    verdict.notes.extend(listing.notes)
    return verdict
