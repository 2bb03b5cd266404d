"""The ``audit:`` section of gateway.yaml: where the audit service listens and how its web viewer logs in."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from extproc.sections import Port, Section, resolve_paths


class Audit(Section):
    """The audit service: recordings served to the people the policy's ``viewers`` rules allow."""

    prefix: str = Field(default="/audit/", description="its public path behind the gateway's listener")
    address: str = "127.0.0.1"
    port: Port = 8090
    client_id: str | None = Field(
        default=None,
        description="OIDC client of the web viewer (Authorization Code + PKCE). Unset: web login off, the viewer "
        "says how to turn it on (no default id: an IdP only knows the clients registered with it; the dev issuer "
        "accepts any name)",
    )
    client_secret_file: Path | None = Field(
        default=None, description="a confidential client's secret, read from this file"
    )
    login_keys_file: Path | None = Field(
        default=None,
        description="keys sealing the viewer's login cookie (AES-256-GCM), one '<key id> <base64 of 32 bytes>' per "
        "line, the first seals, all open (rotation: add the new key first, drop the old one after 8 h). Shared by "
        "the audit replicas so any replica reads any login. Unset: a random key per process (a restart logs "
        "everyone out; replicas do not share logins)",
    )
    login_issuer: str | None = Field(
        default=None, description="which configured issuer the web viewer logs in with; default: the first"
    )
    index: str | None = Field(
        default=None,
        description="the session index: a SQLite file (default <recording.directory>/.audit-index.sqlite), or a "
        "postgresql://user@host/db URL shared by several audit replicas (one of them indexes, elected by an "
        "advisory lock). Give the password through PGPASSFILE or PGPASSWORD, not in the URL",
    )
    index_interval_ms: Annotated[
        int, Field(ge=50, le=600_000, description="how often the index looks for new manifests")
    ] = 2000
    max_connections: Annotated[
        int,
        Field(
            ge=1,
            le=100_000,
            description="connections and requests in progress at once; beyond it the service answers 503 at "
            "once instead of holding more (a flood must not exhaust its memory or file descriptors)",
        ),
    ] = 256

    @field_validator("index")
    @classmethod
    def _index(cls, v: str | None) -> str | None:
        if v is not None and "://" in v and not v.startswith(("postgresql://", "postgres://")):
            raise ValueError("must be a SQLite file path or a postgresql:// URL")
        if v is not None and v.startswith(("postgresql://", "postgres://")) and re.search(r"://[^/@]*:[^/@]*@", v):
            raise ValueError("holds a password: give it through PGPASSFILE or PGPASSWORD instead of gateway.yaml")
        return v

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"/([A-Za-z0-9._-]+/)+", v) or any(p in (".", "..") for p in v.split("/")):
            raise ValueError("must look like /audit/ (slashes at both ends, letters, digits, '.', '_', '-')")
        return v

    def resolved(self, base: Path) -> Audit:
        """Relative paths resolve against the config file's folder."""
        resolved = resolve_paths(self, base, "client_secret_file", "login_keys_file")
        if self.index is None or self.index.startswith(("postgresql://", "postgres://")):
            return resolved
        return resolved.model_copy(update={"index": str((base / self.index).resolve())})
