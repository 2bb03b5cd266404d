"""The collaborators an exchange talks to, as small Protocols: what it needs of them, nothing more.

The gateway wires the real ones (OIDC authenticator, policy watcher, recorder); unit tests pass fakes.
"""

from __future__ import annotations

from typing import Protocol

from extproc.authn.principal import Principal
from extproc.policy.compiled import CompiledPolicy
from extproc.recording.events import Event


class Authenticator(Protocol):
    """Verifies a caller's bearer token."""

    async def authenticate(self, authorization: str | None) -> Principal:
        """The verified caller; raises an ``AuthError`` (401/503) otherwise."""
        ...


class PolicySource(Protocol):
    """The policy in force; each exchange takes one snapshot, so a reload never splits a decision."""

    @property
    def current(self) -> CompiledPolicy: ...


class EventSink(Protocol):
    """Where an exchange's recording events go (the recorder)."""

    @property
    def accepting(self) -> bool:
        """False while events cannot be made durable: new exchanges are refused (recording.required)."""
        ...

    def emit(self, event: Event) -> bool:
        """Queue one event; False when it could not be taken."""
        ...

    async def written(self) -> None:
        """Return once every event taken so far is on disk (survives the processor's death); ``StoreError``
        when that cannot happen (spool failing, recorder stopped) or takes too long."""
        ...
