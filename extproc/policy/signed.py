"""Signed files the gateway trusts (grants, the revocation log, tool pins): one Ed25519 scheme for all of them.

A signed document is a pydantic model with ``key_id`` and ``sig``; the signature covers every other field as JSON
with sorted keys and no spaces (format v1 of these files; ``ascii_only`` says whether non-ASCII is escaped). The
key is the gateway's recording key, the one that signs manifests, so a file written by hand is refused.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any, ClassVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict

from extproc.recording.manifest import key_id


class SignedDoc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    ascii_only: ClassVar[bool] = True

    key_id: str = ""
    sig: str = ""

    def signed_part(self) -> bytes:
        doc = self.model_dump()
        doc.pop("sig")
        return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=self.ascii_only).encode()


def sign(private: Ed25519PrivateKey, doc: SignedDoc) -> dict[str, Any]:
    """The document as a dict with ``key_id`` and ``sig`` filled in."""
    doc = doc.model_copy(update={"key_id": key_id(private.public_key()), "sig": ""})
    return {**doc.model_dump(), "sig": base64.b64encode(private.sign(doc.signed_part())).decode()}


def verify(public: Ed25519PublicKey, doc: SignedDoc) -> str | None:
    """None when ``public`` signed ``doc`` as it is, else why not."""
    if not doc.sig:
        return "unsigned"
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
