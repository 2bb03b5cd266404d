"""Where the data keys of ``recording.encrypt_payloads: per_subject`` live and what wraps them (``shred.py``).

Key-encryption keys (a 32-byte key file with AES key wrap, RFC 3394; or AWS KMS) and key stores (a folder, or a
prefix of the recordings' S3 bucket written without Object Lock) holding each subject's wrapped data keys and its
signed erasure record. ``shred.Keyring`` caches the unwrapped keys; nothing here is on the request path.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.keywrap import aes_key_unwrap, aes_key_wrap

from extproc.errors import ConfigError

# --- key-encryption keys --------------------------------------------------------------------------------------


class Kek(Protocol):
    """Wraps and unwraps data keys; ``name`` says which KEK (stored beside each wrapped key)."""

    name: str

    def wrap(self, key: bytes, sid: str) -> bytes: ...

    def unwrap(self, wrapped: bytes, sid: str) -> bytes: ...


class FileKek:
    """A 32-byte key from a file (64 hex characters, or 32 raw bytes); AES key wrap (RFC 3394)."""

    def __init__(self, path: Path) -> None:
        try:
            raw = Path(path).read_bytes().strip()
        except OSError as e:
            raise ConfigError(f"recording.payload_keys.kek_file: cannot read {path}: {e.strerror}") from e
        try:
            key = bytes.fromhex(raw.decode()) if len(raw) == 64 else raw
        except (UnicodeDecodeError, ValueError):
            key = raw
        if len(key) != 32:
            raise ConfigError(f"recording.payload_keys.kek_file: {path} must hold 32 bytes (or 64 hex characters)")
        self._key = key
        self.name = "file:" + hashlib.sha256(key).hexdigest()[:16]

    def wrap(self, key: bytes, sid: str) -> bytes:
        return aes_key_wrap(self._key, key)

    def unwrap(self, wrapped: bytes, sid: str) -> bytes:
        return aes_key_unwrap(self._key, wrapped)


class KmsKek:
    """AWS KMS: Encrypt/Decrypt with the subject's id as encryption context (boto3's default credential chain)."""

    def __init__(self, key_id: str, region: str | None = None, endpoint_url: str | None = None) -> None:
        import boto3

        self._client = boto3.client("kms", region_name=region, endpoint_url=endpoint_url)
        self._key_id = key_id
        self.name = "kms:" + key_id

    def wrap(self, key: bytes, sid: str) -> bytes:
        out = self._client.encrypt(KeyId=self._key_id, Plaintext=key, EncryptionContext={"subject": sid})
        return bytes(out["CiphertextBlob"])

    def unwrap(self, wrapped: bytes, sid: str) -> bytes:
        return bytes(self._client.decrypt(CiphertextBlob=wrapped, EncryptionContext={"subject": sid})["Plaintext"])


# --- key stores -----------------------------------------------------------------------------------------------


class KeyStore(Protocol):
    """Wrapped data keys by subject id and key id; erasure records."""

    def keys(self, sid: str) -> dict[str, bytes]:
        """Every wrapped key record of a subject, by key id."""
        ...

    def create(self, sid: str, kid: str, record: bytes) -> None: ...

    def destroy(self, sid: str) -> list[str]:
        """Delete every key of a subject (every version); the key ids destroyed."""
        ...

    def put_erasure(self, sid: str, record: bytes) -> None: ...

    def erasure(self, sid: str) -> bytes | None: ...


class FileKeyStore:
    """``<directory>/<subject id>/<key id>.json``; erasures in ``<directory>/erased/<subject id>.json``."""

    def __init__(self, directory: Path) -> None:
        self.root = Path(directory)

    def keys(self, sid: str) -> dict[str, bytes]:
        folder = self.root / sid
        if not folder.is_dir():
            return {}
        return {p.stem: p.read_bytes() for p in sorted(folder.glob("*.json"))}

    def create(self, sid: str, kid: str, record: bytes) -> None:
        folder = self.root / sid
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = folder / f".{kid}.tmp"
        with open(tmp, "wb") as f:
            f.write(record)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / f"{kid}.json")

    def destroy(self, sid: str) -> list[str]:
        folder = self.root / sid
        gone = []
        for p in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            p.write_bytes(b"\0" * p.stat().st_size)  # best effort on file systems that overwrite in place
            p.unlink()
            gone.append(p.stem)
        return gone

    def put_erasure(self, sid: str, record: bytes) -> None:
        (self.root / "erased").mkdir(parents=True, exist_ok=True)
        (self.root / "erased" / f"{sid}.json").write_bytes(record)

    def erasure(self, sid: str) -> bytes | None:
        p = self.root / "erased" / f"{sid}.json"
        return p.read_bytes() if p.is_file() else None


class S3KeyStore:
    """``<prefix>/<subject id>/<key id>.json`` in the recordings' bucket, never under Object Lock (an erasure must
    be able to delete them); ``destroy`` deletes every version."""

    def __init__(self, client: Any, bucket: str, prefix: str) -> None:
        self.client, self.bucket, self.prefix = client, bucket, prefix.rstrip("/")

    def keys(self, sid: str) -> dict[str, bytes]:
        found = self.client.list_objects_v2(Bucket=self.bucket, Prefix=f"{self.prefix}/{sid}/").get("Contents", [])
        out = {}
        for o in sorted(found, key=lambda o: o["Key"]):
            kid = o["Key"].rsplit("/", 1)[-1].removesuffix(".json")
            out[kid] = self.client.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read()
        return out

    def create(self, sid: str, kid: str, record: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/{sid}/{kid}.json", Body=record)

    def destroy(self, sid: str) -> list[str]:
        listed = self.client.list_object_versions(Bucket=self.bucket, Prefix=f"{self.prefix}/{sid}/")
        gone: dict[str, None] = {}
        for v in [*listed.get("Versions", []), *listed.get("DeleteMarkers", [])]:
            self.client.delete_object(Bucket=self.bucket, Key=v["Key"], VersionId=v["VersionId"])
            gone[v["Key"].rsplit("/", 1)[-1].removesuffix(".json")] = None
        return list(gone)

    def put_erasure(self, sid: str, record: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=f"{self.prefix}/erased/{sid}.json", Body=record)

    def erasure(self, sid: str) -> bytes | None:
        try:
            return bytes(
                self.client.get_object(Bucket=self.bucket, Key=f"{self.prefix}/erased/{sid}.json")["Body"].read()
            )
        except self.client.exceptions.NoSuchKey:
            return None
