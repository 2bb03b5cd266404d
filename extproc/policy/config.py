"""The ``policy:`` and ``grants:`` sections of gateway.yaml: where policies and signed grants are read from."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field

from extproc.sections import Section, resolve_paths


class Policy(Section):
    """Where the YAML policies live; the processor watches the directory and reloads valid edits."""

    directory: Path = Path("policies")
    reload_interval_ms: Annotated[
        int, Field(ge=100, le=600_000, description="how often the directory is checked for edits")
    ] = 1000

    def resolved(self, base: Path) -> Policy:
        """Relative paths resolve against the config file's folder."""
        return resolve_paths(self, base, "directory")


class Grants(Section):
    """Signed just-in-time grants (``mcp-extproc grant create``), verified with recording.signing_key."""

    directory: Path = Path("grants")

    def resolved(self, base: Path) -> Grants:
        """Relative paths resolve against the config file's folder."""
        return resolve_paths(self, base, "directory")
