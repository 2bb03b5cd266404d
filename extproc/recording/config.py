"""The ``recording:`` section of gateway.yaml: the store, the write-ahead spool, segments, signing and retention."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from extproc.evidence.config import TransparencyLogConfig
from extproc.sections import Section, resolve_paths

_CREDENTIAL_KEYS = ("access_key", "secret", "session_token", "password", "credentials", "profile")


class ObjectLock(Section):
    """S3 Object Lock retention applied to every object (the bucket must have Object Lock enabled)."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    retain_days: Annotated[int, Field(ge=1, le=36_500)]


class S3(Section):
    """S3 (or S3-compatible) bucket. Credentials come only from boto3's default chain, never from this file."""

    bucket: Annotated[str, Field(min_length=3, max_length=63)]
    prefix: str = "mcp-recordings"
    region: str | None = None
    endpoint_url: str | None = Field(default=None, description="S3-compatible stores (MinIO, Ceph, a test server)")
    object_lock: ObjectLock | None = None
    kms_key_id: str | None = Field(
        default=None, description="SSE-KMS key id or ARN; unset: the bucket's default encryption"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in data:
                if any(word in str(key).lower() for word in _CREDENTIAL_KEYS):
                    raise ValueError(
                        f"{key}: credentials are never read from gateway.yaml; use the AWS default chain "
                        "(IRSA, EKS pod identity, instance role, environment)"
                    )
        return data


class PayloadKeys(Section):
    """Where the data keys of ``encrypt_payloads: per_subject`` live and what wraps them (docs/payload-protection.md)"""

    kek_file: Path | None = Field(
        default=None, description="key-encryption key: 32 bytes, or 64 hex characters (`openssl rand -hex 32`)"
    )
    kms_key_id: str | None = Field(default=None, description="or an AWS KMS key id/ARN wrapping the data keys")
    kms_region: str | None = None
    kms_endpoint_url: str | None = Field(default=None, description="a KMS-compatible endpoint (tests)")
    directory: Path | None = Field(
        default=None,
        description="file store: the wrapped data keys (default <recording.directory>/.payload-keys); S3 store: "
        "they live under <s3.prefix>-payload-keys/ in the bucket, never under Object Lock",
    )

    @model_validator(mode="after")
    def _one_kek(self) -> PayloadKeys:
        if (self.kek_file is None) == (self.kms_key_id is None):
            raise ValueError("payload_keys: give exactly one of kek_file or kms_key_id")
        return self


class Retention(Section):
    """File store retention: whole sessions deleted by age, then oldest first over a total size; each recorded."""

    max_age_days: Annotated[float, Field(gt=0)] | None = None
    max_total_bytes: Annotated[int, Field(ge=1 << 20)] | None = None
    interval_s: Annotated[float, Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _some_bound(self) -> Retention:
        if self.max_age_days is None and self.max_total_bytes is None:
            raise ValueError("retention: set max_age_days, max_total_bytes or both")
        return self


class Recording(Section):
    """Where and how every exchange is recorded; relative paths resolve against the config file's folder."""

    store: Literal["file", "s3"] = "file"
    directory: Path = Field(default=Path("recordings"), description="the file store")
    s3: S3 | None = None
    spool_directory: Path | None = Field(
        default=None,
        description="write-ahead spool: every event is on local disk before anything else; default <directory>/.spool",
    )
    spool_max_bytes: Annotated[int, Field(ge=16 << 10)] = 1 << 30
    segment_max_bytes: Annotated[int, Field(ge=1024, le=256 << 20, description='see bench/README.md "Large SSE"')] = (
        4 << 20
    )
    segment_max_age_ms: Annotated[int, Field(ge=10, le=3_600_000)] = 2000
    compression: Literal["none", "gzip", "zstd"] = Field(default="none", description="of stored segments (s3 store)")
    signing_key: Path | None = Field(default=None, description="Ed25519 private key (PEM) that signs segment manifests")
    capture_salt_file: Path | None = Field(
        default=None,
        description="secret (>= 32 bytes, e.g. `openssl rand -hex 32`) salting the hashes of values that capture "
        "level `shape` keeps instead of the values; one per deployment, shared by every processor. Unset: a random "
        "salt per process (hashes then match only within one process's life)",
    )
    session_idle_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    run_idle_gap_s: Annotated[
        float,
        Field(
            gt=0,
            le=86_400,
            description="stateless (2026-07-28) traffic has no session id: one client's requests within one window "
            "of this length (aligned to the epoch) are one recorded run, the same unit on every worker and replica "
            "sharing auth.session_secret_file (a W3C traceparent overrides the window)",
        ),
    ] = 300.0
    completer_interval_s: Annotated[float, Field(gt=0)] = 30.0
    digest_interval_s: Annotated[
        float, Field(gt=0, description="each writer's signed digest of what it stored, this often")
    ] = 300.0
    flush_interval_ms: Annotated[int, Field(ge=1, le=60_000)] = 200
    seal_interval_ms: (
        Annotated[
            int,
            Field(
                ge=1,
                le=600_000,
                description="a stream's segment is sealed (signed, shipped) on a tick every this interval once an "
                "exchange of it ended (all due streams together); default 5 x flush_interval_ms. Every event is in the "
                "spool before that: a longer interval delays only what the store shows, never what survives a crash",
            ),
        ]
        | None
    ) = None
    max_seals_per_second: Annotated[
        float,
        Field(
            gt=0,
            description="seals (by exchange end or segment age) per second across all streams of a processor: with "
            "many busy sessions each one's segments are sealed less often instead of the recorder's cost growing "
            "with the session count. Size cuts (segment_max_bytes) and stream ends are never held back",
        ),
    ] = 100.0
    queue_size: Annotated[int, Field(ge=16)] = 10_000
    max_event_body_bytes: Annotated[
        int,
        Field(
            ge=1024,
            description="a body (request, response, SSE event, chunk) over this is kept as size + SHA-256 only, at "
            "every level",
        ),
    ] = 1 << 20
    max_held_body_bytes: Annotated[
        int,
        Field(
            ge=64 << 10,
            description="per processor worker: bytes of unfinished response bodies (SSE events, JSON documents) "
            "held for parsing, over all its exchanges. Past it, a body's further bytes still stream on but are "
            "recorded as size + SHA-256 only",
        ),
    ] = 32 << 20
    required: bool = Field(
        default=True,
        description="refuse (503) exchanges that cannot be recorded; false lets them pass, lost events counted",
    )
    servers: dict[str, Literal["full", "metadata", "off"]] = Field(
        default={},
        description="per server: full (default), metadata (no payloads: who, method, tool, decision, status, "
        "sizes, hashes), off",
    )
    off_acknowledged: str = Field(
        default="", description="why some servers are not recorded at all: required for `off`, logged at start"
    )
    retention: Retention | None = Field(default=None, description="file store only (S3: lifecycle rules on the bucket)")
    encrypt_payloads: Literal["off", "per_subject"] = Field(
        default="off",
        description="per_subject: payloads are encrypted before chaining with a data key per caller (issuer#subject), "
        "so `mcp-extproc erase` can make one person's payloads unreadable while every proof still verifies",
    )
    payload_keys: PayloadKeys | None = None
    transparency_log: TransparencyLogConfig | None = Field(
        default=None, description="a Merkle log over every stored manifest and digest, with signed checkpoints"
    )

    @model_validator(mode="after")
    def _store_settings(self) -> Recording:
        if self.store == "s3" and self.s3 is None:
            raise ValueError("store: s3 needs an s3: section (bucket, prefix, …)")
        if self.store == "file" and self.s3 is not None:
            raise ValueError("s3: given but store is 'file'")
        if "off" in self.servers.values() and not self.off_acknowledged.strip():
            raise ValueError(
                "servers: 'off' records nothing for a server; say why in recording.off_acknowledged (it is logged)"
            )
        if self.encrypt_payloads == "per_subject" and self.payload_keys is None:
            raise ValueError("encrypt_payloads: per_subject needs payload_keys (kek_file or kms_key_id)")
        if self.transparency_log is not None and (self.transparency_log.signing_key or self.signing_key) is None:
            raise ValueError("transparency_log: needs a signing key (its own signing_key, or recording.signing_key)")
        if self.retention is not None and self.store != "file":
            raise ValueError("retention: file store only; for S3 use lifecycle rules on the bucket")
        return self

    @property
    def spool(self) -> Path:
        return self.spool_directory or self.directory / ".spool"

    def resolved(self, base: Path) -> Recording:
        """Relative paths resolve against the config file's folder."""
        rec = resolve_paths(self, base, "directory", "spool_directory", "signing_key", "capture_salt_file")
        if rec.payload_keys is not None:
            rec = rec.model_copy(
                update={"payload_keys": resolve_paths(rec.payload_keys, base, "kek_file", "directory")}
            )
        if rec.transparency_log is not None:
            rec = rec.model_copy(update={"transparency_log": rec.transparency_log.resolved(base)})
        return rec
