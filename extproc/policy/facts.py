"""Facts a decision needs from outside the policy files, gathered (with I/O) before the pure evaluation.

``reviews``: the API server's answer to each Kubernetes check a candidate rule requires (SubjectAccessReview).
``grants``: the signed, unexpired just-in-time grants in force. The engine only reads them; fetching happens in
``gather`` (async, cached by the sources), so ``decide`` stays a plain function on plain data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from extproc.authn.principal import Principal
from extproc.policy.compiled import CompiledPolicy, KubeCheck


@dataclass(frozen=True, slots=True)
class Review:
    """One SubjectAccessReview outcome; ``unavailable`` when the API server did not answer (fail closed)."""

    allowed: bool
    reason: str = ""
    unavailable: bool = False
    cached: bool = False

    def to_record(self, check: KubeCheck) -> dict[str, object]:
        outcome = "unavailable" if self.unavailable else ("allowed" if self.allowed else "denied")
        return {"outcome": outcome, "reason": self.reason, "cached": self.cached, **check.to_record()}


class GrantLike(Protocol):
    """What the engine needs of a grant (``extproc.policy.grants.Grant``)."""

    @property
    def id(self) -> str: ...

    @property
    def reason(self) -> str: ...

    def covers(self, who: Principal, server: str, method: str, tool: str | None, now: float) -> bool: ...

    def to_record(self) -> dict[str, object]: ...


@dataclass(frozen=True, slots=True)
class Facts:
    reviews: Mapping[KubeCheck, Review] = field(default_factory=dict)
    grants: Sequence[GrantLike] = ()
    now: float = 0.0


class Reviewer(Protocol):
    async def review(self, check: KubeCheck, who: Principal) -> Review: ...


class GrantSource(Protocol):
    async def active(self, now: float) -> Sequence[GrantLike]: ...


async def gather(
    policy: CompiledPolicy,
    server: str,
    who: Principal,
    now: float,
    reviewer: Reviewer | None = None,
    grants: GrantSource | None = None,
    methods: Iterable[str] | None = None,
) -> Facts:
    """Reviews for the Kubernetes checks the rules for this server (and methods) require, and the grants in force."""
    import asyncio

    checks = policy.kube_checks(server, methods)
    reviews: dict[KubeCheck, Review] = {}
    if checks:
        if reviewer is None:
            reviews = {c: Review(False, "no kubernetes section in gateway.yaml", unavailable=True) for c in checks}
        else:
            answers = await asyncio.gather(*(reviewer.review(c, who) for c in checks))
            reviews = dict(zip(checks, answers, strict=True))
    return Facts(reviews, await grants.active(now) if grants is not None else (), now)
