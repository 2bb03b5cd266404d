"""The one secrets classifier: does a name (header, query parameter, JSON key) say its value is a credential?

Used for header names (dropped from recordings), query parameter names (values replaced) and the built-in key
redaction of recorded bodies, so the three never disagree. Values are checked separately, by the redaction
patterns (``policy/redact.py``), wherever they appear.

A name is split into words (``-``, ``_``, ``.``, spaces and camelCase boundaries: ``x-github-pat``,
``clientSecret``, ``AWS_SECRET_ACCESS_KEY``); it is secret when a word, or two adjacent words written together,
is a credential word. Whole words, not substrings: ``keyboard``, ``author`` and ``max_tokens`` are not secrets,
``x-functions-key`` and ``api_key`` are.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import secrets
from pathlib import Path

from extproc.errors import ConfigError

SECRET_NAME_RULE = "builtin-password-field"
"""The rule name recorded when a value was redacted because of its name."""

_WORDS = frozenset(
    {
        # passwords
        "password", "passwd", "passphrase", "pwd", "pass", "passcode", "pin",
        # tokens and keys
        "secret", "token", "credential", "credentials", "apikey", "key", "privatekey", "accesskey",
        "pat", "jwt", "bearer", "otp", "sig", "signature", "saml",
        # HTTP authentication
        "authorization", "auth", "authentication", "cookie",
    }
)  # fmt: skip


def marker(rule: str) -> str:
    """The text that replaces a redacted value."""
    return f"[REDACTED:{rule}]"


_SPLIT = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


@functools.lru_cache(maxsize=4096)  # names repeat endlessly (header names, JSON keys); bounded: they come from peers
def is_secret_name(name: str) -> bool:
    """True when ``name`` says its value is a credential (pseudo-headers such as ``:authority`` never are)."""
    if name.startswith(":"):
        return False
    words = [w.lower() for w in _SPLIT.split(name) if w]
    if any(w in _WORDS for w in words):
        return True
    return any(a + b in _WORDS for a, b in itertools.pairwise(words))


MIN_SALT_BYTES = 32
log = logging.getLogger(__name__)


def load_salt(path: Path | None, key: str = "recording.capture_salt_file") -> bytes:
    """The deployment's capture salt from a secret file (``key`` names it in errors), or a random per-process one."""
    if path is None:
        log.info("%s is not set: hashes of shape-level recordings use a random salt of this process", key)
        return secrets.token_bytes(MIN_SALT_BYTES)
    try:
        salt = Path(path).read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {path}: {e.strerror}") from e
    if len(salt) < MIN_SALT_BYTES:
        raise ConfigError(f"{key}: {path} must hold at least {MIN_SALT_BYTES} bytes")
    return salt
