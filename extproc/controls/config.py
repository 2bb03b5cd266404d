"""The ``approvals:`` section of gateway.yaml: where held calls and their approvals live, and who is told."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from extproc.sections import Section, resolve_paths


class Approvals(Section):
    """Approvals of one exact call (policy rules with ``effect: approve``); files signed with
    recording.signing_key. Every processor worker, replica and the audit service must see the same directory."""

    directory: Path = Field(
        default=Path("approvals"), description="requests, decisions and uses (one signed JSON file each)"
    )
    webhook_url: str | None = Field(
        default=None,
        description="POST a plain JSON notice (docs: README 'Approvals') here when a call is held; best effort, "
        "bounded, never delays the caller",
    )
    webhook_timeout_ms: Annotated[int, Field(ge=100, le=10_000)] = 2000
    retention_hours: Annotated[int, Field(ge=1, le=24 * 366)] = Field(
        default=168,
        description="the files of a request are removed this long after it can no longer be decided or used",
    )

    @field_validator("webhook_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http:// or https:// URL")
        return v

    def retention_s(self) -> float:
        return self.retention_hours * 3600.0

    def resolved(self, base: Path) -> Approvals:
        """Relative paths resolve against the config file's folder."""
        return resolve_paths(self, base, "directory")
