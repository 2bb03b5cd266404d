"""Recording stores behind one small Protocol: the recorder never knows whether it writes to disk or S3."""

from __future__ import annotations

import hashlib
import re
from typing import Protocol

_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_key(name: str) -> str:
    """A session or writer id as a file/object name: as-is when harmless, else a hash (ids are client-controlled)."""
    if _SAFE.match(name) and ".." not in name:
        return name
    return "h-" + hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:40]


class Store(Protocol):
    """Append-only streams of bytes, one per (session, writer); durable after ``sync``."""

    async def append(self, session: str, writer: str, data: bytes) -> None:
        """Append ``data`` to the stream; visible to readers, durable after the next ``sync``."""
        ...

    async def sync(self) -> None:
        """Make everything appended so far durable (fsync, upload)."""
        ...

    async def close(self) -> None:
        """Sync and release resources."""
        ...

    def list_sessions(self) -> list[str]:
        """Keys of all recorded sessions."""
        ...

    def read_session(self, session: str) -> dict[str, bytes]:
        """Every writer's stream of one session, by writer id."""
        ...
