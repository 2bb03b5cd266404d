"""The per-key credential cache: single flight per key, never shared across callers, failures not cached."""

from __future__ import annotations

import asyncio

import pytest

from extproc.upstream.cache import CredentialCache, Issued


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _key(subject: str, server: str = "github", scopes: tuple[str, ...] = ("repo",)) -> tuple:
    return ("https://idp.test", subject, server, scopes)


async def test_concurrent_requests_for_one_key_share_one_issuance() -> None:
    clock = Clock()
    cache = CredentialCache(clock, refresh_before=30, max_age=3600)
    gate = asyncio.Event()
    calls = 0

    async def issue() -> Issued:
        nonlocal calls
        calls += 1
        await gate.wait()
        return Issued(token="tok-alice", expires_at=clock.now + 300)

    waiting = [asyncio.create_task(cache.get(_key("alice"), issue)) for _ in range(20)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiting)

    assert calls == 1
    assert {r[0].token for r in results} == {"tok-alice"}
    assert [r[1] for r in results].count(False) == 1  # the one that issued; the others joined it


@pytest.mark.parametrize(
    "other",
    [
        pytest.param(_key("bob"), id="other-subject"),
        pytest.param(("https://other-idp.test", "alice", "github", ("repo",)), id="same-subject-other-issuer"),
        pytest.param(_key("alice", server="jira"), id="other-server"),
        pytest.param(_key("alice", scopes=("repo", "admin")), id="other-scopes"),
    ],
)
async def test_a_different_key_never_gets_anothers_token(other: tuple) -> None:
    clock = Clock()
    cache = CredentialCache(clock, refresh_before=30, max_age=3600)

    async def issue_for(who: str) -> Issued:
        return Issued(token=f"tok-{who}", expires_at=clock.now + 300)

    first, _ = await cache.get(_key("alice"), lambda: issue_for("alice"))
    second, cached = await cache.get(other, lambda: issue_for("other"))

    assert first.token == "tok-alice" and second.token == "tok-other" and not cached


async def test_an_entry_serves_until_shortly_before_expiry() -> None:
    clock = Clock()
    cache = CredentialCache(clock, refresh_before=30, max_age=3600)
    n = 0

    async def issue() -> Issued:
        nonlocal n
        n += 1
        return Issued(token=f"tok{n}", expires_at=clock.now + 100)

    assert (await cache.get(_key("alice"), issue))[0].token == "tok1"
    clock.now += 69
    assert await cache.get(_key("alice"), issue) == (Issued(token="tok1", expires_at=1100), True)
    clock.now += 1  # 30 s before expiry: renewed, never sent about to expire
    assert (await cache.get(_key("alice"), issue))[0].token == "tok2"


async def test_a_failure_reaches_every_waiter_and_is_not_cached() -> None:
    cache = CredentialCache(Clock(), refresh_before=30, max_age=3600)
    gate = asyncio.Event()

    async def failing() -> Issued:
        await gate.wait()
        raise RuntimeError("idp down")

    waiting = [asyncio.create_task(cache.get(_key("alice"), failing)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)

    async def working() -> Issued:
        return Issued(token="tok", expires_at=5000)

    assert await cache.get(_key("alice"), working) == (Issued(token="tok", expires_at=5000), False)


async def test_one_waiter_cancelled_does_not_cancel_the_others() -> None:
    clock = Clock()
    cache = CredentialCache(clock, refresh_before=30, max_age=3600)
    gate = asyncio.Event()

    async def issue() -> Issued:
        await gate.wait()
        return Issued(token="tok", expires_at=clock.now + 300)

    first = asyncio.create_task(cache.get(_key("alice"), issue))
    second = asyncio.create_task(cache.get(_key("alice"), issue))
    await asyncio.sleep(0)
    first.cancel()  # the client that started the exchange went away
    gate.set()

    assert (await second)[0].token == "tok"
    assert len(cache) == 1


async def test_a_token_without_time_left_is_used_once_not_cached() -> None:
    clock = Clock()
    cache = CredentialCache(clock, refresh_before=30, max_age=3600)

    async def issue() -> Issued:
        return Issued(token="short", expires_at=clock.now + 10)

    await cache.get(_key("alice"), issue)
    assert len(cache) == 0
