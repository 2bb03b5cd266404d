"""``recording.transparency_log:`` in gateway.yaml: the log over the recordings, its checkpoints and trusted time."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from extproc.sections import Section, resolve_paths


class CheckpointBucket(Section):
    """A second, write-once home for checkpoints: an S3 bucket with Object Lock, apart from the recordings."""

    bucket: Annotated[str, Field(min_length=3, max_length=63)]
    prefix: str = "mcp-checkpoints"
    region: str | None = None
    endpoint_url: str | None = None
    lock_mode: Literal["COMPLIANCE", "GOVERNANCE"] = Field(
        default="COMPLIANCE", description="COMPLIANCE: nobody, not even the account root, deletes a copy early"
    )
    retain_days: Annotated[int, Field(ge=1, le=36_500)]


class TransparencyLogConfig(Section):
    """A C2SP tiled transparency log per writer over every stored segment manifest and digest (docs/evidence.md)."""

    origin: str = Field(
        description="the logs' name, a schema-less URL (e.g. gateway.example.com/mcp-log): each writer's log has "
        "the origin <origin>/<writer>, and its checkpoints are signed under that name"
    )
    checkpoint_interval_s: Annotated[float, Field(gt=0, le=86_400)] = Field(
        default=60.0, description="a signed checkpoint this often (and at shutdown)"
    )
    signing_key: Path | None = Field(
        default=None, description="Ed25519 private key (PEM) that signs checkpoints; default recording.signing_key"
    )
    tsa_url: str | None = Field(
        default=None, description="RFC 3161 Time-Stamp Authority: each checkpoint is timestamped, the token stored"
    )
    tsa_timeout_s: Annotated[float, Field(gt=0, le=120)] = 10.0
    checkpoint_bucket: CheckpointBucket | None = Field(
        default=None,
        description="each checkpoint (and its timestamp) is also written to this bucket under Object Lock "
        "(the bucket must have Object Lock enabled)",
    )

    @field_validator("origin")
    @classmethod
    def _name(cls, origin: str) -> str:
        if not origin or any(c.isspace() for c in origin) or "+" in origin:
            raise ValueError("origin: a non-empty name without spaces or '+' (a schema-less URL)")
        return origin.rstrip("/")

    @model_validator(mode="after")
    def _tsa(self) -> TransparencyLogConfig:
        if self.tsa_url is not None and not self.tsa_url.startswith(("http://", "https://")):
            raise ValueError("tsa_url: an http:// or https:// URL")
        return self

    def resolved(self, base: Path) -> TransparencyLogConfig:
        return resolve_paths(self, base, "signing_key")
