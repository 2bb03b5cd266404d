"""Login state sealed into cookies: what one replica seals another opens with the shared key file; tampering,
another purpose, an unknown or removed key id and expiry are all refused; rotation keeps old logins working."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import pytest

from extproc.audit.sealed import KeyFileError, Sealer, new_key_line, parse_keys


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def _keys(path: Path, *lines: str) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_a_replica_opens_what_another_sealed_with_the_shared_key_file(tmp_path: Path) -> None:
    keys = _keys(tmp_path / "keys", new_key_line("k1"))
    one, two = Sealer(keys), Sealer(keys)
    value = one.seal("login", {"who": "alice"}, ttl=60)
    assert value.startswith("v1.k1.") and "alice" not in value  # sealed, not only signed
    doc = two.open("login", value)
    assert doc is not None and doc["who"] == "alice"


def test_tampered_foreign_other_purpose_and_expired_cookies_are_refused(tmp_path: Path) -> None:
    clock = Clock()
    keys = _keys(tmp_path / "keys", new_key_line("k1"))
    sealer = Sealer(keys, clock=clock)
    value = sealer.seal("login", {"who": "alice"}, ttl=60)
    head, body = value.rsplit(".", 1)
    raw = bytearray(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    raw[20] ^= 1
    flipped = f"{head}.{base64.urlsafe_b64encode(bytes(raw)).decode().rstrip('=')}"
    for bad in (flipped, value.replace("v1.k1.", "v1.k2."), value.replace("v1.", "v2."), "", "x" * 5000, "v1.k1.!!"):
        assert sealer.open("login", bad) is None, bad[:20]
    assert sealer.open("started", value) is None  # a started login's cookie never passes for a login, nor back
    assert Sealer(_keys(tmp_path / "other", new_key_line("k1"))).open("login", value) is None  # same id, other key
    assert Sealer().open("login", value) is None
    clock.now += 59.9
    assert sealer.open("login", value) is not None
    clock.now += 0.1
    assert sealer.open("login", value) is None  # the expiry inside the sealed state


def test_rotation_seals_with_the_first_key_and_opens_with_every_listed_one(tmp_path: Path) -> None:
    keys = _keys(tmp_path / "keys", new_key_line("k1"))
    sealer = Sealer(keys)
    old = sealer.seal("login", {"n": 1}, ttl=60)
    old_line = keys.read_text().strip()
    _keys(keys, new_key_line("k2"), old_line)  # rotation: the new key first, the old one still listed
    new = sealer.seal("login", {"n": 2}, ttl=60)  # the file is re-read when it changes
    assert new.startswith("v1.k2.") and sealer.key_ids == ["k2", "k1"]
    other_replica = Sealer(keys)
    assert other_replica.open("login", old) is not None and other_replica.open("login", new) is not None
    _keys(keys, keys.read_text().splitlines()[0])  # the old key removed: its logins end
    assert sealer.open("login", old) is None and sealer.open("login", new) is not None
    keys.write_text("garbage\n")  # a broken file on rotation keeps the keys in use, and says why on start
    assert sealer.open("login", new) is not None
    with pytest.raises(KeyFileError, match="keys:1: expected"):
        Sealer(keys)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no key"),
        ("k1 c2hvcnQ=\n", "is 5 bytes; AES-256-GCM needs 32"),
        ("k1 " + "A" * 43 + "=\nk1 " + "A" * 43 + "=\n", "appears twice"),
        ("bad/id " + "A" * 43 + "=\n", "expected"),
        ("k1 ***\n", "k1"),
    ],
)
def test_key_file_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(KeyFileError, match=message):
        parse_keys(text, "keys")
