"""S3 store: every finished segment is an immutable object, followed by its signed manifest.

Keys: ``<prefix>/YYYY/MM/DD/<session>/<writer>/<segment>.jsonl[.gz|.zst]`` and ``…/<segment>.manifest.json``
(the day is the segment's, in UTC); each writer's digests under ``<prefix>-digests/<writer>/<number>.json``.
Each put carries its SHA-256 (``ChecksumSHA256``: S3 rejects a body that does not match), optionally an Object
Lock retention and an SSE-KMS key. Credentials come only from boto3's
default chain (IRSA, EKS pod identity, instance role, environment), never from gateway.yaml.

boto3 is synchronous: every call runs in a worker thread so the event loop never blocks on the network.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from extproc.errors import StoreError
from extproc.recording.store import Segment, StreamData, safe_key
from extproc.recording.store.codec import EXTENSIONS, Compression, compress, decompress

_DIGEST = re.compile(r"^(?P<n>\d{8})\.json$")
_YEAR = re.compile(r"^\d{4}$")
_SEGMENT = re.compile(r"^(?P<n>\d{8})\.(?P<kind>jsonl(?:\.gz|\.zst)?|manifest\.json)$")


class S3Store:
    """Segments as objects in one bucket under one prefix."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "mcp-recordings",
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        object_lock_mode: str | None = None,
        object_lock_days: int = 0,
        kms_key_id: str | None = None,
        compression: Compression = "none",
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Digests beside the segments, not among them: ``<prefix>-digests/<writer>/<number>.json`` (its own
        # prefix, so access and retention can be set apart from the segments').
        self.digest_prefix = f"{self.prefix}-digests" if self.prefix else "digests"
        self.object_lock_mode = object_lock_mode
        self.object_lock_days = object_lock_days
        self.kms_key_id = kms_key_id
        self.compression = compression
        self._client = client
        self._client_args = {"region_name": region, "endpoint_url": endpoint_url}

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            # Few, quick attempts: the uploader owns retrying (with backoff and jitter) and the spool holds the data.
            config = Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=3, read_timeout=20)
            self._client = boto3.client("s3", config=config, **self._client_args)
        return self._client

    def _folder(self, session: str, writer: str, created: float) -> str:
        day = time.strftime("%Y/%m/%d", time.gmtime(created))
        return "/".join(p for p in (self.prefix, day, safe_key(session), safe_key(writer)) if p)

    async def put_segment(self, segment: Segment) -> None:
        try:
            await asyncio.to_thread(self._put_segment, segment)
        except Exception as e:  # botocore raises many kinds (connection, client, checksum); all mean "not stored"
            raise StoreError(
                f"cannot upload segment {segment.number} of {segment.session!r} to s3://{self.bucket}: {e}"
            ) from e

    def _put_segment(self, segment: Segment) -> None:
        folder = self._folder(segment.session, segment.writer, segment.created)
        name = f"{folder}/{segment.number:08d}"
        self._put(f"{name}.jsonl{EXTENSIONS[self.compression]}", compress(segment.data, self.compression))
        self._put(f"{name}.manifest.json", segment.manifest)  # after its segment: a manifest never points at nothing

    def _put(self, key: str, body: bytes) -> None:
        extra: dict[str, Any] = {}
        if self.object_lock_mode:
            extra["ObjectLockMode"] = self.object_lock_mode
            extra["ObjectLockRetainUntilDate"] = datetime.now(UTC) + timedelta(days=self.object_lock_days)
        if self.kms_key_id:
            extra["ServerSideEncryption"] = "aws:kms"
            extra["SSEKMSKeyId"] = self.kms_key_id
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=body,
            ChecksumAlgorithm="SHA256",  # the header Object Lock requires; S3 checks the body against the value
            ChecksumSHA256=base64.b64encode(hashlib.sha256(body).digest()).decode(),
            **extra,
        )

    async def put_digest(self, writer: str, number: int, data: bytes) -> None:
        key = f"{self.digest_prefix}/{safe_key(writer)}/{number:08d}.json"
        try:
            await asyncio.to_thread(self._put, key, data)
        except Exception as e:  # as for segments: any botocore failure means "not stored"
            raise StoreError(f"cannot upload digest {number} of {writer!r} to s3://{self.bucket}: {e}") from e

    def read_digests(self) -> dict[str, dict[int, bytes]]:
        root = self.digest_prefix + "/"
        out: dict[str, dict[int, bytes]] = {}
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=root):
            for obj in page.get("Contents", []):
                writer, _, name = obj["Key"].removeprefix(root).partition("/")
                if (m := _DIGEST.match(name)) is not None:
                    out.setdefault(writer, {})[int(m["n"])] = self._get(obj["Key"])
        return out

    async def close(self) -> None:
        self._client = None

    # --- reading (CLI) -----------------------------------------------------------------------------------------

    def _prefixes(self, prefix: str) -> list[str]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, Delimiter="/"
        ):
            out += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        return out

    def _days(self) -> list[str]:
        root = f"{self.prefix}/" if self.prefix else ""
        years = [p for p in self._prefixes(root) if _YEAR.match(p.removeprefix(root).rstrip("/"))]  # only YYYY/
        days: list[str] = years
        for _ in range(2):  # MM/ -> DD/
            days = [p for d in days for p in self._prefixes(d)]
        return days

    def list_sessions(self) -> list[str]:
        return sorted({p.rstrip("/").rsplit("/", 1)[-1] for day in self._days() for p in self._prefixes(day)})

    def read_session(self, session: str) -> dict[str, StreamData]:
        key = safe_key(session)
        objects: dict[str, dict[int, dict[str, str]]] = {}  # writer -> segment -> kind -> object key
        for day in self._days():
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=f"{day}{key}/"
            ):
                for obj in page.get("Contents", []):
                    writer, _, name = obj["Key"].removeprefix(f"{day}{key}/").partition("/")
                    m = _SEGMENT.match(name)
                    if m:
                        kind = "manifest" if m["kind"] == "manifest.json" else "data"
                        objects.setdefault(writer, {}).setdefault(int(m["n"]), {})[kind] = obj["Key"]
        out = {}
        for writer, segments in sorted(objects.items()):
            stream = StreamData()
            parts = []
            for n in sorted(segments):
                if "data" in segments[n]:
                    parts.append(decompress(self._get(segments[n]["data"]), segments[n]["data"]))
                if "manifest" in segments[n]:
                    stream.manifests.append(self._get(segments[n]["manifest"]))
            stream.data = b"".join(parts)
            out[writer] = stream
        return out

    def _get(self, key: str) -> bytes:
        # cast: boto3's client is untyped (Any); get_object's Body is a botocore StreamingBody, whose read() is bytes.
        return cast(bytes, self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())
