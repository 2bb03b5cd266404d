"""Sealed payloads in the record-format vectors (docs/payload-protection.md): one fixed data key (test material,
published beside the vectors), form 1 written here from its documented form, form 2 by the processor's own sealer.
Nonces are fixed per case (a prefix and a counter) so the vectors regenerate byte for byte; never do that with a
real key."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any, cast

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from extproc.policy.capture import Capture
from extproc.recording.events import Event, ExchangeStart, McpRequest, McpResponse, ResponseStart
from extproc.recording.shred import Keyring, PayloadSealer, subject_id

DATA_KEY = hashlib.sha256(b"mcp-extproc test vectors: payload data key").digest()
SUBJECT = "https://id.example#u-42"  # the principal of every exchange of the vectors
KEY_REF = f"{subject_id(SUBJECT)}/0123456789abcdef"


class VectorKeyring:
    """The vectors' one data key, to write (``PayloadSealer``) and read (``open_events``); no key store."""

    def for_writing(self, subject: str) -> tuple[str, AESGCM]:
        assert subject == SUBJECT, subject
        return KEY_REF, AESGCM(DATA_KEY)

    def for_reading(self, ref: str, seen: object = None) -> AESGCM | None:
        return AESGCM(DATA_KEY) if ref == KEY_REF else None

    def erasure(self, sid: str) -> None:
        return None


def keyring() -> Keyring:
    return cast(Keyring, VectorKeyring())


def form_2(prefix: int) -> PayloadSealer:
    """The processor's sealer (the form it writes today) with a fixed nonce prefix."""
    sealer = PayloadSealer(keyring())
    sealer._nonce = prefix << 32
    return sealer


class Form1:
    """Sealed form 1 as docs/payload-protection.md describes it: no ``v``; the plaintext holds every sealed field
    (a body's parsed messages beside its raw bytes, exchange.start's full path beside its headers)."""

    def __init__(self, prefix: int) -> None:
        self.cipher, self.prefix, self.count = AESGCM(DATA_KEY), prefix, 0

    def seal(self, ev: Event) -> None:
        fields: dict[str, Any]
        if isinstance(ev, ExchangeStart):
            fields = {"headers": ev.headers, "path": ev.path}
        elif isinstance(ev, McpRequest | McpResponse):
            fields = {"messages": ev.messages, "body": ev.body}
        elif isinstance(ev, ResponseStart):
            fields = {"headers": ev.headers}
        else:
            return
        nonce, self.count = ((self.prefix << 32) | self.count).to_bytes(12, "big"), self.count + 1
        plain = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
        aad = f"{ev.type}\n{ev.session}\n{ev.exchange}\n{ev.index}".encode()
        seal = {
            "alg": "aes-256-gcm",
            "key": KEY_REF,
            "ct": base64.b64encode(nonce + self.cipher.encrypt(nonce, plain, aad)).decode(),
        }
        if isinstance(ev, ExchangeStart | ResponseStart):
            ev.headers = {"sealed": json.dumps(seal, separators=(",", ":"))}
            if isinstance(ev, ExchangeStart):
                ev.path = ev.path.partition("?")[0]
        else:
            ev.body = {"sealed": seal}
            ev.messages = [Capture("metadata").message(m) for m in ev.messages]
