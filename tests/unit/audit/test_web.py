"""The viewer's login state: started logins (unauthenticated) and finished ones stay bounded in count."""

from __future__ import annotations

from dataclasses import dataclass

from extproc.audit.web import LOGIN_TTL, Logins, PendingLogins, _same
from extproc.authn.principal import Principal


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def test_started_logins_are_capped_and_the_oldest_is_evicted_first() -> None:
    pending = PendingLogins(limit=100, clock=Clock())
    for n in range(1000):
        pending.add(f"s{n}", "verifier", "nonce", "/audit/")
        assert len(pending) <= 100
    assert len(pending) == 100
    assert pending.take("s0") is None and pending.take("s899") is None  # evicted, oldest first
    got = pending.take("s999")
    assert got is not None and got.verifier == "verifier"
    assert pending.take("s999") is None  # once only


def test_started_logins_expire_and_leave_with_the_next_one() -> None:
    clock = Clock()
    pending = PendingLogins(limit=100, clock=clock)
    for n in range(50):
        pending.add(f"old{n}", "v", "n", "/audit/")
    clock.now += LOGIN_TTL
    assert pending.take("old1") is None  # expired: refused even though still held
    pending.add("new", "v", "n", "/audit/")
    assert len(pending) == 1  # every expired one went with the next add


def test_finished_logins_are_capped_too() -> None:
    clock = Clock()
    logins = Logins("/audit/", secure=False, clock=clock, limit=10)
    who = Principal(issuer="i", subject="s", username="u")
    sids = [logins.create(who, clock.now + 3600)[0] for _ in range(25)]
    assert len(logins) == 10
    assert set(logins._logins) == set(sids[-10:])


def test_token_comparison_takes_any_text() -> None:
    assert _same("abc", "abc") and not _same("ab²", "abc") and not _same("€", "")
