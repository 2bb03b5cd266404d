"""The ``budgets:`` section of gateway.yaml: where the counters of policy ``limits:`` live.

Without the section (or with ``store: local``) each processor counts in its own memory: exact within one
processor, which is what one machine with one worker needs. With ``store: redis://host:port/db`` every worker and
replica shares one counter per caller and limit, updated atomically by Redis.
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from extproc.sections import Section

_SCHEMES = ("redis", "rediss", "unix")


class Budgets(Section):
    """The counter store of policy ``limits:`` (budgets per caller, tool and server)."""

    store: str = Field(
        "local",
        description="local: in this processor's memory (exact per processor); redis://host:port/db (rediss:// for "
        "TLS, unix:///path.sock): one counter shared by every worker and replica",
    )
    timeout_ms: Annotated[
        int, Field(ge=10, le=10_000, description="longest wait for the store per call; then on_store_error applies")
    ] = 250
    key_prefix: str = Field(
        "mcp-extproc:budget:", min_length=1, max_length=100, description="prefix of every counter key in Redis"
    )

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if v == "local":
            return v
        parts = urlsplit(v)
        if parts.scheme not in _SCHEMES or not (parts.netloc or parts.path):
            raise ValueError(f"expected local or a redis://host:port/db URL, got {v[:80]!r}")
        return v

    @property
    def shared(self) -> bool:
        """True when the counters live in Redis (shared across workers and replicas)."""
        return self.store != "local"
