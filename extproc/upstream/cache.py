"""Issued upstream credentials, in memory only, per (issuer, subject, server, scopes), shared by concurrent requests.

Rules, in the order they matter:
- the key names the caller (issuer + subject): two users never share an entry, whatever else they share;
- an entry serves only until ``refresh_before`` seconds before it expires (a token must not expire in flight);
- concurrent misses for one key share one issuance (single flight); a failed issuance is not cached, each
  waiter gets the failure, and the next request tries again;
- nothing here is ever written anywhere: the process's memory is the only copy.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

CacheKey = tuple[str, str, str, tuple[str, ...]]  # issuer, subject, server, scopes
RecordedKey = tuple[str, str, str, str]  # recording unit, server, kind, SHA-256 of the credential


@dataclass(frozen=True, slots=True)
class Issued:
    """An upstream credential and what is recorded about it."""

    token: str = field(repr=False)
    expires_at: float  # clock() time
    audience: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    delegation: tuple[str, ...] = ()
    sha256: str = ""  # of ``token``, computed once at issuance (recorded with every use)
    reuse_until: float | None = None  # no later than this, whatever the token's own lifetime (the caller's login)
    # The Authorization header's value, made once per issuance rather than once per request that reuses it.
    bearer: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bearer", f"Bearer {self.token}")


class CredentialCache:
    """LRU of issued credentials with single-flight issuance. One per process, used from its event loop only."""

    def __init__(self, clock: Callable[[], float], refresh_before: float, max_age: float, size: int = 10_000) -> None:
        self._clock = clock
        self._refresh_before = refresh_before
        self._max_age = max_age
        self._size = size
        self._entries: OrderedDict[CacheKey, tuple[Issued, float]] = OrderedDict()  # issued, good until
        self._flights: dict[CacheKey, asyncio.Task[Issued]] = {}
        self.issued = 0  # issuances started (a cache miss not joined to another's flight)

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, key: CacheKey, issue: Callable[[], Awaitable[Issued]]) -> tuple[Issued, bool]:
        """The credential for ``key`` and whether it came from the cache (or a flight already under way)."""
        hit = self.peek(key)
        if hit is not None:
            return hit, True
        flight = self._flights.get(key)
        joined = flight is not None
        if flight is None:
            # A task of its own: a caller that goes away (client reset) must not cancel the others' issuance.
            flight = self._flights[key] = asyncio.create_task(self._issue(key, issue), name="upstream-credential")
            flight.add_done_callback(lambda t: t.cancelled() or t.exception())  # failures reach the waiters
        return await asyncio.shield(flight), joined

    def peek(self, key: CacheKey) -> Issued | None:
        """The cached credential for ``key`` while it is still good, else None (an expired entry is dropped). No
        await: a warm request is answered without a coroutine (token_exchange.py's ``warm``)."""
        hit = self._entries.get(key)
        if hit is None:
            return None
        if self._clock() < hit[1]:
            self._entries.move_to_end(key)
            return hit[0]
        del self._entries[key]
        return None

    async def _issue(self, key: CacheKey, issue: Callable[[], Awaitable[Issued]]) -> Issued:
        self.issued += 1
        try:
            issued = await issue()
        finally:
            del self._flights[key]
        now = self._clock()
        until = min(issued.expires_at - self._refresh_before, now + self._max_age)
        if issued.reuse_until is not None:
            until = min(until, issued.reuse_until)
        if until > now:
            self._entries[key] = (issued, until)
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return issued

    def clear(self) -> None:
        self._entries.clear()


class RecordedCredentials:
    """Which credential this process has recorded in full in which recording unit, so that later exchanges of the
    unit only name it (``ExchangeEndNaming``). Bounded LRU: a key forgotten only means one more full record. Per
    process on purpose: each writer's stream holds the full record of every credential it names."""

    def __init__(self, size: int = 100_000) -> None:
        self._size = size
        self._keys: OrderedDict[RecordedKey, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def seen(self, key: RecordedKey) -> bool:
        if key not in self._keys:
            return False
        self._keys.move_to_end(key)
        return True

    def add(self, key: RecordedKey) -> None:
        self._keys[key] = None
        self._keys.move_to_end(key)
        if len(self._keys) > self._size:
            self._keys.popitem(last=False)
