"""Hostile and odd bearer tokens, shared by the unit and integration tests of authentication."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization

from extproc.authn.dev_issuer import DevIssuer


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, payload: dict, sign: Callable[[bytes], bytes] = lambda _: b"") -> str:
    """A JWT with any header and payload, signed by ``sign`` (empty signature by default)."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64(sign(signing_input.encode()))}"


def claims(iss: DevIssuer, aud: str, **extra: object) -> dict:
    now = int(time.time())
    return {"iss": iss.url, "sub": "mallory", "aud": aud, "iat": now, "exp": now + 600, **extra}


def alg_none(iss: DevIssuer, aud: str) -> str:
    return forge({"alg": "none", "typ": "JWT", "kid": iss.keys.current_kid}, claims(iss, aud))


def hs256_with_public_key(iss: DevIssuer, aud: str) -> str:
    """The classic key-confusion attack: HMAC keyed with the issuer's published RSA key."""
    public_pem = (
        iss.keys.private_key(iss.keys.current_kid)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "JWT", "kid": iss.keys.current_kid}
    return forge(header, claims(iss, aud), lambda m: hmac.new(public_pem, m, hashlib.sha256).digest())


def altered_payload(iss: DevIssuer, aud: str) -> str:
    """A genuine signature over a payload that was then swapped."""
    header, _, signature = iss.mint("alice", aud=aud).split(".")
    return f"{header}.{b64(json.dumps(claims(iss, aud, sub='admin')).encode())}.{signature}"
