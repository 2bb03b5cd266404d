"""C2SP signed notes (c2sp.org/signed-note) and checkpoints (c2sp.org/tlog-checkpoint), Ed25519 only.

A note is a text ending in a newline, a blank line, and signature lines ``— <key name> base64(key ID || sig)``.
The key ID is the first four bytes of SHA-256(key name || 0x0A || 0x01 || 32-byte public key). A verifier key is
written ``<name>+<key ID hex>+base64(0x01 || public key)`` (the form Go's sumdb/note and every witness read).
A checkpoint is a note whose text is ``<origin>\\n<tree size>\\n<base64 root hash>\\n`` (then optional lines).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ED25519 = b"\x01"
DASH = "\u2014"
MAX_SIGNATURES = 16
_NAME = re.compile(r"^[^\s+]+$")


class NoteError(ValueError):
    """A note or checkpoint that is malformed or not signed by the expected key."""


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(name: str, public: Ed25519PublicKey) -> bytes:
    """SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + ED25519 + _raw(public)).digest()[:4]


def check_name(name: str) -> str:
    """A key name: non-empty, no spaces, no '+'."""
    if not _NAME.match(name):
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")
    return name


@dataclass(frozen=True, slots=True)
class Verifier:
    """One trusted Ed25519 key under one name."""

    name: str
    public: Ed25519PublicKey

    @property
    def id(self) -> bytes:
        return key_id(self.name, self.public)

    def vkey(self) -> str:
        """``<name>+<hex key ID>+<base64(0x01 || key)>``."""
        return f"{self.name}+{self.id.hex()}+{base64.b64encode(ED25519 + _raw(self.public)).decode()}"

    @classmethod
    def parse(cls, vkey: str) -> Verifier:
        """Read a verifier key; NoteError if it is not a well-formed Ed25519 one."""
        name, _, rest = vkey.strip().partition("+")
        hexid, _, b64 = rest.partition("+")
        try:
            raw = base64.b64decode(b64, validate=True)
            want = bytes.fromhex(hexid)
        except (binascii.Error, ValueError):
            raise NoteError(f"verifier key {vkey!r} is malformed") from None
        if len(raw) != 33 or raw[:1] != ED25519 or len(want) != 4:
            raise NoteError(f"verifier key {vkey!r} is not an Ed25519 key")
        verifier = cls(check_name(name), Ed25519PublicKey.from_public_bytes(raw[1:]))
        if verifier.id != want:
            raise NoteError(f"verifier key {vkey!r}: key ID does not match the key")
        return verifier


@dataclass(frozen=True, slots=True)
class NoteSigner:
    """Signs note texts as ``name``."""

    name: str
    private: Ed25519PrivateKey

    @property
    def verifier(self) -> Verifier:
        return Verifier(self.name, self.private.public_key())

    def sign(self, text: str) -> str:
        """The signed note: ``text``, a blank line, one signature line."""
        if not text.endswith("\n"):
            raise NoteError("a note text ends in a newline")
        sig = self.verifier.id + self.private.sign(text.encode())
        return f"{text}\n{DASH} {self.name} {base64.b64encode(sig).decode()}\n"


@dataclass(frozen=True, slots=True)
class Signature:
    name: str
    id: bytes
    sig: bytes


def split_note(note: str | bytes) -> tuple[str, list[Signature]]:
    """The text (with its final newline) and the signature lines of a note; NoteError if malformed."""
    if isinstance(note, bytes):
        try:
            note = note.decode()
        except UnicodeDecodeError:
            raise NoteError("a note is UTF-8") from None
    if any(ord(c) < 0x20 and c != "\n" for c in note):
        raise NoteError("a note has no control characters other than newline")
    cut = note.rfind("\n\n")
    if cut < 0 or not note.endswith("\n"):
        raise NoteError("a note is a text, a blank line and signature lines")
    text, lines = note[: cut + 1], note[cut + 2 :].splitlines()
    if not lines or len(lines) > MAX_SIGNATURES:
        raise NoteError(f"a note carries 1 to {MAX_SIGNATURES} signatures")
    sigs = []
    for line in lines:
        dash, _, rest = line.partition(" ")
        name, _, b64 = rest.partition(" ")
        try:
            raw = base64.b64decode(b64, validate=True)
        except binascii.Error:
            raise NoteError(f"signature line {line!r} is malformed") from None
        if dash != DASH or not name or " " in b64 or len(raw) < 5:
            raise NoteError(f"signature line {line!r} is malformed")
        sigs.append(Signature(name, raw[:4], raw[4:]))
    return text, sigs


def open_note(note: str | bytes, verifier: Verifier) -> str:
    """The text of a note signed by ``verifier``; NoteError otherwise (a known key's bad signature rejects all)."""
    text, sigs = split_note(note)
    known = [s for s in sigs if s.name == verifier.name and s.id == verifier.id]
    if not known:
        raise NoteError(f"note is not signed by {verifier.name} ({verifier.id.hex()})")
    for s in known:
        try:
            verifier.public.verify(s.sig, text.encode())
        except InvalidSignature:
            raise NoteError(f"signature of {verifier.name} does not match the note (edited or forged)") from None
    return text


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: origin, size, root hash, and any extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = field(default=())

    def text(self) -> str:
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode(), *self.extensions]
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        lines = text.split("\n")
        if len(lines) < 4 or lines[-1] != "":
            raise NoteError("a checkpoint has an origin, a size and a root hash line")
        origin, size, root = lines[0], lines[1], lines[2]
        if not origin or not size.isdigit() or (size != "0" and size.startswith("0")):
            raise NoteError(f"checkpoint origin {origin!r} or size {size!r} is malformed")
        try:
            raw = base64.b64decode(root, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) != 32:
            raise NoteError(f"checkpoint root hash {root!r} is not 32 bytes of base64")
        extensions = tuple(lines[3:-1])
        if "" in extensions:
            raise NoteError("checkpoint extension lines must not be empty")
        return cls(origin, int(size), raw, extensions)


def open_checkpoint(note: str | bytes, verifier: Verifier, origin: str | None = None) -> Checkpoint:
    """A checkpoint signed by ``verifier`` (and of ``origin`` when given); NoteError otherwise."""
    checkpoint = Checkpoint.parse(open_note(note, verifier))
    if origin is not None and checkpoint.origin != origin:
        raise NoteError(f"checkpoint is of log {checkpoint.origin!r}, not {origin!r}")
    return checkpoint
