"""The viewer's login state lives in sealed cookies: nothing is held per login, a logout is remembered where the
replicas share it, CSRF tokens travel sealed with the login."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from extproc.audit.sealed import Sealer, new_key_line
from extproc.audit.web import REVOCATION_CHECK_S, SESSION_COOKIE, LocalRevocations, Logins, _same, _Started
from extproc.authn.principal import Principal


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


def _request(cookie: str | None, csrf: str | None = None) -> Request:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"{SESSION_COOKIE}={cookie}".encode()))
    if csrf is not None:
        headers.append((b"x-csrf-token", csrf.encode()))
    return Request({"type": "http", "method": "POST", "path": "/audit/logout", "headers": headers, "query_string": b""})


def test_a_login_made_by_one_replica_works_on_another_and_a_logout_ends_it_on_both(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(new_key_line("k1") + "\n")
    clock = Clock()
    shared = LocalRevocations(clock)
    one = Logins("/audit/", False, Sealer(keys, clock=clock), shared, clock)
    two = Logins("/audit/", False, Sealer(keys, clock=clock), shared, clock)
    who = Principal("https://issuer.test", "alice-sub", "alice", ("team-a",), "t1", {"email": "a@x", "nonce": "n"})
    cookie = one.create(who, expires=clock.now + 3600)
    got = two.principal(_request(cookie))
    assert got == who and got.claims == {"email": "a@x"}  # claims policies match on travel; the nonce does not
    csrf = two.csrf(_request(cookie))
    assert csrf and one.check_csrf(_request(cookie, csrf)) and not one.check_csrf(_request(cookie, csrf + "x"))
    assert not one.check_csrf(_request(cookie))  # no token: refused
    two.end(_request(cookie))  # logout on replica two: refused there at once ...
    assert two.principal(_request(cookie)) is None
    clock.now += REVOCATION_CHECK_S  # ... and on replica one once its last lookup (kept a second) is stale
    assert one.principal(_request(cookie)) is None and not one.check_csrf(_request(cookie, csrf))


def test_a_login_ends_with_its_id_token_or_after_eight_hours(tmp_path: Path) -> None:
    clock = Clock()
    logins = Logins("/audit/", False, Sealer(clock=clock), LocalRevocations(clock), clock)
    who = Principal("i", "s", "u")
    short, long = logins.create(who, clock.now + 600), logins.create(who, clock.now + 86_400)
    clock.now += 600
    assert logins.principal(_request(short)) is None and logins.principal(_request(long)) is not None
    clock.now += 8 * 3600 - 600
    assert logins.principal(_request(long)) is None


def test_a_revocation_store_that_is_away_refuses_cookie_logins() -> None:
    class Away(LocalRevocations):
        def login_revoked(self, login_id: str) -> bool:
            raise OSError("connection refused")

    logins = Logins("/audit/", False, Sealer(), Away())
    cookie = logins.create(Principal("i", "s", "u"), 2e9)
    assert logins.principal(_request(cookie)) is None  # a logout cannot be checked: fail closed


def test_one_revocation_lookup_per_login_and_second() -> None:
    class Counting(LocalRevocations):
        reads = 0

        def login_revoked(self, login_id: str) -> bool:
            self.reads += 1
            return super().login_revoked(login_id)

    clock, store = Clock(), Counting()
    logins = Logins("/audit/", False, Sealer(clock=clock), store, clock)
    cookie = logins.create(Principal("i", "s", "u"), clock.now + 3600)
    for _ in range(5):
        assert logins.principal(_request(cookie)) is not None and logins.csrf(_request(cookie))
    assert store.reads == 1
    clock.now += REVOCATION_CHECK_S
    assert logins.principal(_request(cookie)) is not None and store.reads == 2


def test_a_started_login_needs_every_part() -> None:
    assert _Started.of({"verifier": "v", "nonce": "n", "next": "/audit/"}) == _Started("v", "n", "/audit/")
    assert _Started.of({"verifier": "v", "nonce": 1, "next": "/audit/"}) is None
    assert _Started.of(None) is None


def test_token_comparison_takes_any_text() -> None:
    assert _same("abc", "abc") and not _same("ab²", "abc") and not _same("€", "")
