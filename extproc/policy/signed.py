"""Signed files the gateway trusts (grants, the revocation log, tool pins, approvals): one Ed25519 scheme for all.

A signed document is a pydantic model with ``key_id`` and ``sig``; the signature covers every other field as JSON
with sorted keys and no spaces (format v1 of these files; ``ascii_only`` says whether non-ASCII is escaped). The
key is the gateway's recording key, the one that signs manifests, so a file written by hand is refused.

``write`` replaces a file atomically (grants, pins); ``create`` writes one only if it does not exist yet, so two
writers cannot both create it (an approval's decision and each of its uses).
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from extproc.recording.manifest import Signer, key_id


class SignedDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    ascii_only: ClassVar[bool] = True

    key_id: str = ""
    sig: str = ""

    def signed_part(self) -> bytes:
        doc = self.model_dump()
        doc.pop("sig")
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=self.ascii_only).encode()


def sign(key: Ed25519PrivateKey | Signer, doc: SignedDoc) -> dict[str, Any]:
    """The document as a dict with ``key_id`` and ``sig`` filled in (``key``: a private key, or the recording's
    Signer, which must hold one)."""
    if isinstance(key, Signer):
        doc = doc.model_copy(update={"key_id": key.key_id, "sig": ""})
        return {**doc.model_dump(), "sig": key.sign_bytes(doc.signed_part())}
    doc = doc.model_copy(update={"key_id": key_id(key.public_key()), "sig": ""})
    return {**doc.model_dump(), "sig": base64.b64encode(key.sign(doc.signed_part())).decode()}


def verify(public: Ed25519PublicKey, doc: SignedDoc) -> str | None:
    """None when ``public`` signed ``doc`` as it is, else why not."""
    if not doc.sig:
        return "unsigned"
    if doc.key_id and doc.key_id != key_id(public):
        return f"signature does not match: signed by another key ({doc.key_id})"
    try:
        public.verify(base64.b64decode(doc.sig), doc.signed_part())
    except (InvalidSignature, ValueError):
        return "signature does not match (not issued by this gateway's key, or edited)"
    return None


def write(path: Path, doc: dict[str, Any], *, ascii_only: bool = True) -> Path:
    """Write a signed document atomically: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=ascii_only) + "\n")
    os.replace(tmp, path)
    return path


def create(path: Path, doc: dict[str, Any], *, ascii_only: bool = True) -> bool:
    """Write a signed document only if ``path`` does not exist yet (O_EXCL on a link of a complete temporary file):
    False when someone else wrote it first. A reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    tmp.write_text(json.dumps(doc, sort_keys=True, ensure_ascii=ascii_only) + "\n")
    try:
        os.link(tmp, path)  # atomic and exclusive: fails when the name exists
        return True
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
