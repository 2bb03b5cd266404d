"""Fixtures: a real development issuer over HTTP on loopback, a controllable clock, Authenticator factory."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from extproc.authn.config import AuthConfig
from extproc.authn.dev_issuer import DevIssuer
from extproc.authn.verify import Authenticator

PUBLIC_URL = "https://gw.example.test"


class FakeClock:
    """Monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Ticker:
    """Injected ``sleep`` for background loops: each ``tick()`` lets one sleep return."""

    def __init__(self) -> None:
        self._ticks: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        await self._ticks.get()

    def tick(self) -> None:
        self._ticks.put_nowait(None)


async def wait_for(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``condition()`` holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


def auth_config(issuer_url: str, **issuer_overrides: Any) -> AuthConfig:
    return AuthConfig.model_validate(
        {
            "issuers": [{"issuer": issuer_url, **issuer_overrides}],
            "public_url": PUBLIC_URL,
            "allowed_origins": ["https://app.example.test"],
        }
    )


MakeAuth = Callable[..., Awaitable[Authenticator]]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ticker() -> Ticker:
    return Ticker()


@pytest.fixture(name="wait_for")
def wait_for_fixture() -> Callable[..., Awaitable[None]]:
    """``await wait_for(lambda: cond, within=5)`` — fixtures instead of imports keep conftest import-free."""
    return wait_for


@pytest.fixture
async def make_auth(clock: FakeClock) -> AsyncIterator[MakeAuth]:
    created: list[Authenticator] = []

    async def make(issuer_url: str, *, start: bool = True, sleep: Any = None, **overrides: Any) -> Authenticator:
        kwargs = {"sleep": sleep} if sleep else {}
        auth = Authenticator(auth_config(issuer_url, **overrides), clock=clock, **kwargs)
        created.append(auth)
        if start:
            await auth.start()
        return auth

    yield make
    for auth in created:
        await auth.close()


@pytest.fixture
async def auth(issuer: DevIssuer, make_auth: MakeAuth) -> Authenticator:
    return await make_auth(issuer.url)
