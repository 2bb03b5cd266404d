"""Login state sealed into the browser's cookie (AES-256-GCM, ``cryptography``), so any audit replica can read it.

A cookie is ``v1.<key id>.<base64url(12-byte nonce + ciphertext + tag)>``; the purpose (a started login, a
finished one) and the key id are bound in as associated data, so one kind of cookie never passes for the other
and a changed key id fails the tag. The payload carries its own expiry (``exp``): a stolen cookie stops working
then, whatever the browser keeps.

Keys come from a file shared by the replicas, one ``<key id> <base64 of 32 bytes>`` per line: the first line
seals, every line opens. Rotation: add the new key on the first line (the old one stays below it while logins it
sealed may live, at most MAX_LOGIN_SECONDS), then remove the old line. The file is re-read when it changes.
Without a file a random key lives in the process: a restart logs everyone out and replicas cannot share logins.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

Purpose = Literal["login", "started"]
VERSION = "v1"
MAX_COOKIE = 3800  # browsers keep ~4 KB per cookie; a sealed login beyond this is refused when sealed
_KID = re.compile(r"[A-Za-z0-9_-]{1,32}")


class KeyFileError(ValueError):
    """The login key file cannot be used; the message names the file and the line."""


def parse_keys(text: str, where: str) -> list[tuple[str, bytes]]:
    """``(key id, 32-byte key)`` per line, the sealing key first; blank lines and ``#`` comments are skipped."""
    keys: list[tuple[str, bytes]] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2 or not _KID.fullmatch(parts[0]):
            raise KeyFileError(f"{where}:{n}: expected '<key id> <base64 of 32 bytes>' (key id: letters, digits, _ -)")
        try:
            key = base64.b64decode(parts[1] + "=" * (-len(parts[1]) % 4), altchars=b"-_", validate=False)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{where}:{n}: key {parts[0]!r} is not base64") from None
        if len(key) != 32:
            raise KeyFileError(f"{where}:{n}: key {parts[0]!r} is {len(key)} bytes; AES-256-GCM needs 32")
        if any(kid == parts[0] for kid, _ in keys):
            raise KeyFileError(f"{where}:{n}: key id {parts[0]!r} appears twice")
        keys.append((parts[0], key))
    if not keys:
        raise KeyFileError(f"{where}: no key (one '<key id> <base64 of 32 bytes>' per line)")
    return keys


def new_key_line(kid: str) -> str:
    """A fresh line for a key file (what ``openssl rand -base64 32`` gives, with an id)."""
    return f"{kid} {base64.b64encode(secrets.token_bytes(32)).decode()}"


class Sealer:
    """Seals and opens login state with the keys of one file (or one random in-process key)."""

    def __init__(self, key_file: Path | None = None, clock: Callable[[], float] = time.time) -> None:
        self.key_file = key_file
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: list[tuple[str, AESGCM]] = []
        if key_file is None:
            self._keys = [("local", AESGCM(secrets.token_bytes(32)))]
        else:
            self._load()

    def _load(self) -> None:
        """(Re-)read the key file when its mtime or size changed; a bad new version keeps the last good keys."""
        assert self.key_file is not None
        try:
            st = os.stat(self.key_file)
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp:
                return
            keys = parse_keys(self.key_file.read_text(), str(self.key_file))
        except (OSError, KeyFileError):
            if not self._keys:
                raise
            return  # logged by whoever rotates; the keys in use stay
        with self._lock:
            self._keys = [(kid, AESGCM(key)) for kid, key in keys]
            self._stamp = stamp

    @property
    def key_ids(self) -> list[str]:
        return [kid for kid, _ in self._keys]

    def seal(self, purpose: Purpose, payload: dict[str, Any], ttl: float) -> str:
        """The cookie value for ``payload``, valid for ``ttl`` seconds from now."""
        if self.key_file is not None:
            self._load()
        kid, aead = self._keys[0]
        body = json.dumps({**payload, "exp": self.clock() + ttl}, separators=(",", ":")).encode()
        nonce = secrets.token_bytes(12)
        sealed = nonce + aead.encrypt(nonce, body, f"{VERSION}.{purpose}.{kid}".encode())
        value = f"{VERSION}.{kid}.{base64.urlsafe_b64encode(sealed).decode().rstrip('=')}"
        if len(value) > MAX_COOKIE:
            raise ValueError(f"sealed {purpose} state is {len(value)} characters; browsers keep at most ~4 KB")
        return value

    def open(self, purpose: Purpose, value: str | None) -> dict[str, Any] | None:
        """The payload of a cookie this service sealed for ``purpose``; None when absent, foreign, tampered with,
        sealed with a key no longer listed, or expired."""
        if not value or len(value) > MAX_COOKIE:
            return None
        parts = value.split(".")
        if len(parts) != 3 or parts[0] != VERSION:
            return None
        if self.key_file is not None:
            self._load()
        aead = next((a for kid, a in self._keys if kid == parts[1]), None)
        if aead is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(parts[2] + "=" * (-len(parts[2]) % 4))
            body = aead.decrypt(raw[:12], raw[12:], f"{VERSION}.{purpose}.{parts[1]}".encode())
            doc = json.loads(body)
        except (binascii.Error, ValueError, InvalidTag):
            return None
        if not isinstance(doc, dict) or not isinstance(doc.get("exp"), int | float) or doc["exp"] <= self.clock():
            return None
        return doc
