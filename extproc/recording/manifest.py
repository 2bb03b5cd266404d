"""Signed segment manifests: what makes a finished segment tamper-evident on its own and anchored in its stream.

Each writer stream (one per session and processor process) is cut into segments. When a segment is finished
the recorder writes a manifest naming it exactly: session, writer, segment number, the sequence numbers of its
first and last event, the SHA-256 of its bytes, the chain head after its last line, the hash of the previous
manifest (so segments cannot be dropped or reordered unnoticed) and whether it is the stream's last (``final``).
The manifest is signed with Ed25519; auditors verify with the published public key.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from extproc.errors import ConfigError
from extproc.recording import jsonio

GENESIS = "0" * 64
VERSION = 1


@dataclass(slots=True)
class Manifest:
    """One finished segment of one writer stream. ``sig`` covers every other field (canonical JSON)."""

    session: str
    writer: str
    segment: int
    first: int  # seq of the first event in the segment
    last: int  # seq of the last event
    count: int
    size: int
    sha256: str  # of the segment's bytes (uncompressed JSON lines)
    head: str  # the chain hash after the last line (= SHA-256 of the last line)
    prev_manifest: str  # SHA-256 of the previous manifest's bytes; GENESIS for segment 0
    final: bool = False  # the writer will add nothing to this stream
    open: list[str] = field(default_factory=list)  # exchanges started but not ended at the segment's end
    created: float = 0.0
    sealed_by: str = ""  # the writer that sealed it, when not the stream's own writer (recovery)
    v: int = VERSION
    key_id: str = ""
    sig: str = ""

    def _doc(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}  # flat: no deep copy needed

    def signed_part(self) -> bytes:
        """The bytes the signature covers: canonical JSON of everything except ``sig``."""
        doc = self._doc()
        doc.pop("sig")
        return _canonical(doc)

    def to_bytes(self) -> bytes:
        """One JSON line, stable field order (hashing this is how the next manifest links to it)."""
        return _canonical(self._doc())

    def digest(self) -> str:
        return hashlib.sha256(self.to_bytes()).hexdigest()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        """Parse a stored manifest; ValueError if it is not one."""
        doc = jsonio.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("manifest is not a JSON object")
        known = {k: doc[k] for k in cls.__dataclass_fields__ if k in doc}
        try:
            return cls(**known)
        except TypeError as e:
            raise ValueError(f"manifest is missing fields: {e}") from None


def _canonical(doc: dict[str, Any]) -> bytes:
    # The standard library on purpose: signatures and chain links are recomputed from parsed manifests, so this
    # exact form (sorted keys, ASCII escapes) is part of the format of every manifest already stored.
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name for a public key (first 16 hex digits of the SHA-256 of its raw bytes)."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


class Signer:
    """Signs manifests with the gateway's Ed25519 key; ``Signer(None)`` leaves them unsigned."""

    def __init__(self, private: Ed25519PrivateKey | None) -> None:
        self._private = private
        self.public = private.public_key() if private else None
        self.key_id = key_id(self.public) if self.public else ""

    @classmethod
    def from_file(cls, path: Path | None) -> Signer:
        if path is None:
            return cls(None)
        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise ConfigError(f"recording.signing_key: cannot load {path}: {e}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(f"recording.signing_key: {path} is not an Ed25519 private key")
        return cls(key)

    def sign(self, manifest: Manifest) -> Manifest:
        if self._private is None:
            return manifest
        manifest.key_id = self.key_id
        manifest.sig = self.sign_bytes(manifest.signed_part())
        return manifest

    def sign_bytes(self, data: bytes) -> str:
        """Base64 Ed25519 signature of ``data`` (digests use this; a Signer without a key must not be asked)."""
        if self._private is None:
            raise ValueError("no signing key")
        return base64.b64encode(self._private.sign(data)).decode()


def check_signature(manifest: Manifest, public: Ed25519PublicKey) -> str | None:
    """None if ``manifest`` is signed by ``public``; else why not."""
    return check_signed(manifest.sig, manifest.key_id, manifest.signed_part(), public, "manifest")


def check_signed(sig: str, kid: str, signed: bytes, public: Ed25519PublicKey, what: str) -> str | None:
    """None if ``sig`` is ``public``'s signature of ``signed``; else why not."""
    if not sig:
        return "unsigned"
    if kid and kid != key_id(public):
        return f"signed by another key ({kid})"
    try:
        public.verify(base64.b64decode(sig), signed)
    except (InvalidSignature, ValueError):
        return f"signature does not match its content ({what} edited)"
    return None


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An auditor's copy of the public key (PEM), or the private key file (its public half is used)."""
    data = path.read_bytes()
    try:
        key: Any = serialization.load_pem_public_key(data)
    except ValueError:
        key = serialization.load_pem_private_key(data, password=None).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} is not an Ed25519 key")
    return key


def generate_keys(out: Path) -> tuple[Path, Path]:
    """Write a new key pair: ``signing.key`` (private, mode 0600) and ``signing.pub`` (publish to auditors)."""
    out.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    key_path, pub_path = out / "signing.key", out / "signing.pub"
    if key_path.exists():
        raise FileExistsError(f"{key_path} exists; refusing to overwrite a signing key")
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key_path, pub_path
