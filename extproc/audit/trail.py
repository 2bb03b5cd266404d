"""The auditors' own trail: every access to a recording is an event in a recorded, hash-chained, signed stream.

The trail is an ordinary recording (same recorder, spool, store, chain and signed manifests), so
``sessions verify`` proves it like any MCP session. One session per UTC day: ``audit-YYYY-MM-DD``.
Viewer rules grant reading it with the reserved server name ``audit``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar

from extproc.authn.principal import Principal
from extproc.recording.events import Event
from extproc.recording.recorder import Recorder

TRAIL_PREFIX = "audit-"
ACTIONS = ("list", "show", "events", "replay", "export", "verify", "redrive", "login", "logout", "me", "api")


@dataclass(slots=True, kw_only=True)
class AuditAccess(Event):
    """One access to the audit service: who, what, when, from where, and the result."""

    type: ClassVar[str] = "audit.access"
    principal: dict[str, Any] | None = None
    client: str = ""  # the peer address; behind the gateway's listener, the caller's address as Envoy saw it
    action: str = ""  # one of ACTIONS; "me" only when refused, "api" for a path no route serves
    target: str = ""  # the session key, or "" for a list
    query: dict[str, str] = field(default_factory=dict)
    result: str = ""  # ok | denied | not_found | bad_request | unauthenticated | error
    status: int = 0


def trail_session(now: float) -> str:
    """The trail session of the UTC day of ``now``."""
    return TRAIL_PREFIX + time.strftime("%Y-%m-%d", time.gmtime(now))


class AuditTrail:
    """Appends access events to the trail through a recorder; ``record`` is False when the event cannot be kept."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def record(
        self,
        who: Principal | None,
        client: str,
        action: str,
        target: str,
        query: dict[str, str],
        result: str,
        status: int,
    ) -> bool:
        now = self.recorder.wall_clock()
        return self.recorder.emit(
            AuditAccess(
                session=trail_session(now),
                exchange=uuid.uuid4().hex[:16],
                time=now,
                principal=who.to_record() if who is not None else None,
                client=client,
                action=action,
                target=target,
                query=dict(query),
                result=result,
                status=status,
            )
        )

    @property
    def accepting(self) -> bool:
        return self.recorder.accepting
