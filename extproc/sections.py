"""What the section models of gateway.yaml share: strict frozen models, ports, host:port and path rules.

A leaf (it imports nothing of the project), so each feature's ``config.py`` can use it without pulling in another.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, TypeVar

from pydantic import BaseModel, ConfigDict, Field

_HOSTPORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")

Port = Annotated[int, Field(ge=1, le=65535)]
S = TypeVar("S", bound="Section")


class Section(BaseModel):
    """A gateway.yaml section: unknown keys are errors, and a loaded config never changes."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def split_hostport(value: str) -> tuple[str, int]:
    """'host:port' -> (host, port); raises ValueError with a plain message."""
    m = _HOSTPORT.match(value)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return m["host"].strip("[]"), int(m["port"])


def absolute(v: Path | None) -> Path | None:
    """A validator for paths Envoy reads (from its own working directory): they must be absolute."""
    if v is not None and not v.is_absolute():
        raise ValueError(f"{v}: must be an absolute path (TLS files are read by Envoy, from its working directory)")
    return v


def resolve_paths(section: S, base: Path, *names: str) -> S:
    """``section`` with its relative path fields ``names`` resolved against ``base`` (the config file's folder)."""
    update: dict[str, Path] = {}
    for name in names:
        value = getattr(section, name)
        if value is not None and not value.is_absolute():
            update[name] = (base / value).resolve()
    return section.model_copy(update=update) if update else section
