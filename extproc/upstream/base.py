"""What every kind of upstream credential shares: the Protocol, the per-request context, the recorded event."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from extproc.authn.principal import Principal
from extproc.recording.events import Event, ExchangeEnd


@dataclass(frozen=True, slots=True)
class ExchangeContext:
    """What a credential may need to know about the exchange it is for. ``subject_token`` is the caller's verified
    token: only ever sent to its own issuer's token endpoint, never upstream, never recorded."""

    exchange_id: str
    request_id: str = ""
    session: str | None = None
    subject_token: str = field(default="", repr=False)
    # The exchange's log: what was used or refused. A CredentialLog can also name a credential it recorded in full
    # earlier in the unit (no event built at all); any other callable gets every use as an event.
    record: Callable[[UpstreamCredential], None] | None = None


@dataclass(slots=True, kw_only=True)
class UpstreamCredential(Event):
    """Which credential the server got for this exchange, or why it got none. Never the credential itself."""

    type: ClassVar[str] = "upstream.credential"
    server: str = ""
    kind: str = ""  # token_exchange | static | assertion
    header: str = ""
    sha256: str = ""  # of the credential as sent (without a "Bearer " prefix)
    expires_at: float | None = None
    cached: bool = False  # reused from the per-key cache (the exchange that issued it is recorded where it happened)
    audience: list[str] = field(default_factory=list)
    scopes: list[str] = field(default_factory=list)
    delegation: list[str] = field(default_factory=list)  # who acted for whom: subject first, then each actor
    refused: dict[str, Any] | None = None  # the IdP's error code and description, or why it was unavailable


@dataclass(slots=True, kw_only=True)
class ExchangeEndNaming(ExchangeEnd):
    """``exchange.end`` of an exchange whose credential this writer already recorded in full in the same recording
    unit (an ``upstream.credential`` of the same server, kind and SHA-256): the exchange names it here instead of
    recording it again. One event less per exchange is what a warm cache must cost (issue: at most 2% CPU)."""

    credential: dict[str, Any] = field(default_factory=dict)  # server, kind, sha256, expires_at


class CredentialLog(ABC):
    """An exchange's record of its credential use (extproc/exchange/upstream.py's CredentialRecorder)."""

    __slots__ = ()

    @abstractmethod
    def __call__(self, event: UpstreamCredential) -> None:
        """Record a use or a refusal in full."""

    def name(self, server: str, kind: str, sha256: str, expires_at: float | None, cached: bool) -> bool:
        """Count a use and name it when this credential is already recorded in full in the exchange's unit: True,
        and no event is needed (the warm path builds none). False: the caller records it in full."""
        return False


class UpstreamCredentials(Protocol):
    """One server's way to authenticate to it on the caller's behalf."""

    kind: str

    async def headers_for(self, principal: Principal | None, server: str, ctx: ExchangeContext) -> dict[str, str]:
        """The headers to set on the request toward the server; raises UpstreamIdentity* errors, never returns a
        weaker credential instead."""
        ...


def digest(secret: str) -> str:
    """SHA-256 (hex) of a credential: enough to match it against the IdP's or the server's logs, useless to replay."""
    return hashlib.sha256(secret.encode()).hexdigest()


def emit(ctx: ExchangeContext, event: UpstreamCredential) -> None:
    if ctx.record is not None:
        ctx.record(event)


def named(ctx: ExchangeContext, server: str, kind: str, sha256: str, expires_at: float | None, cached: bool) -> bool:
    """Was this use only named in the exchange's record (see CredentialLog.name)? Else the caller emits it."""
    record = ctx.record
    return isinstance(record, CredentialLog) and record.name(server, kind, sha256, expires_at, cached)
