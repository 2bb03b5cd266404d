"""SubjectAccessReview delegation: the engine's use of reviews, and the reviewer against a loopback API server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kube_api import FakeKubeApi

from extproc.authn.principal import Principal
from extproc.errors import ConfigError
from extproc.kube.config import KubernetesAuthz
from extproc.kube.sar import SubjectAccessReviewer
from extproc.mcp.jsonrpc import McpCall
from extproc.policy.compiled import KubeCheck
from extproc.policy.engine import decide
from extproc.policy.facts import Facts, Review, gather
from extproc.policy.loader import load_policy

POLICY = """apiVersion: mcp-extproc/v1
rules:
  - name: prod-via-rbac
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [prod], methods: ["*"]}
    kubernetes: {verb: use, group: mcp-extproc.io, resource: mcpservers, name: prod, namespace: team-a}
"""
CHECK = KubeCheck("use", "mcp-extproc.io", "mcpservers", "prod", "team-a")
ALICE = Principal("https://idp", "alice-sub", "alice", ("team-a", "eng"))
CALL = McpCall("tools/call", tool="query")


@pytest.fixture
def policy(tmp_path: Path):
    (tmp_path / "p.yaml").write_text(POLICY)
    return load_policy(tmp_path, {"prod", "dev"})


@pytest.mark.parametrize(
    ("review", "allowed", "rule", "unavailable"),
    [
        (Review(True, "RBAC: allowed by RoleBinding mcp/team-a"), True, "prod-via-rbac", False),
        (Review(False, "no RBAC policy matched"), False, "default-deny", False),
        (Review(False, "timeout", unavailable=True), False, "prod-via-rbac", True),
        (None, False, "prod-via-rbac", True),
    ],
    ids=["allowed", "denied", "unavailable", "not-asked"],
)
def test_engine_uses_the_review(policy, review: Review | None, allowed: bool, rule: str, unavailable: bool) -> None:
    facts = Facts(reviews={CHECK: review} if review else {})
    d = decide(policy, ALICE, "prod", CALL, facts)
    assert (d.allowed, d.rule, d.unavailable) == (allowed, rule, unavailable)
    if allowed or unavailable:
        assert d.kubernetes is not None and d.kubernetes["outcome"] == ("allowed" if allowed else "unavailable")
    assert policy.kube_checks("prod") == (CHECK,) and policy.kube_checks("dev") == ()


def test_kubernetes_on_a_deny_rule_is_a_file_line_error(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(POLICY.replace("effect: allow", "effect: deny"))
    with pytest.raises(ConfigError, match=r"p\.yaml:3: rule 'prod-via-rbac': kubernetes applies to allow rules only"):
        load_policy(tmp_path, {"prod"})


@pytest.fixture
def api() -> Iterator[FakeKubeApi]:
    fake = FakeKubeApi().start()
    yield fake
    fake.stop()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _reviewer(api: FakeKubeApi, tmp_path: Path, clock: Clock, **kw: object) -> SubjectAccessReviewer:
    cfg = KubernetesAuthz(
        kubeconfig=api.kubeconfig(tmp_path / "kc"), username_prefix="oidc:", groups_prefix="oidc:", **kw
    )
    return SubjectAccessReviewer(cfg, clock=clock)


async def test_allowed_and_denied_are_cached_for_the_ttl(api: FakeKubeApi, tmp_path: Path, policy) -> None:
    api.sar = lambda spec: (
        {"allowed": True, "reason": 'RBAC: allowed by RoleBinding "mcp-users/team-a"'}
        if "oidc:team-a" in spec["groups"]
        else {"allowed": False, "reason": "no RBAC policy matched"}
    )
    clock = Clock()
    r = _reviewer(api, tmp_path, clock, cache_ttl_s=30)
    first = await r.review(CHECK, ALICE)
    assert first == Review(True, 'RBAC: allowed by RoleBinding "mcp-users/team-a"')
    assert api.reviews[0] == {
        "user": "oidc:alice",
        "groups": ["oidc:team-a", "oidc:eng"],
        "resourceAttributes": {
            "verb": "use",
            "group": "mcp-extproc.io",
            "resource": "mcpservers",
            "name": "prod",
            "namespace": "team-a",
        },
    }
    bob = Principal("https://idp", "bob-sub", "bob", ("team-b",))
    assert (await r.review(CHECK, bob)).allowed is False
    clock.t += 29
    assert (await r.review(CHECK, ALICE)).cached and not (await r.review(CHECK, bob)).allowed
    assert len(api.reviews) == 2  # both answers came from the cache
    clock.t += 2
    api.sar = lambda spec: {"allowed": False, "reason": "binding removed"}
    assert (await r.review(CHECK, ALICE)) == Review(False, "binding removed")
    assert len(api.reviews) == 3

    facts = await gather(policy, "prod", ALICE, time.time(), r)
    d = decide(policy, ALICE, "prod", CALL, facts)
    assert not d.allowed  # the cached deny


async def test_timeout_and_api_down_are_unavailable_and_not_cached(api: FakeKubeApi, tmp_path: Path) -> None:
    def slow(spec: dict) -> dict:
        time.sleep(1.5)
        return {"allowed": True}

    api.sar = slow
    r = _reviewer(api, tmp_path, Clock(), request_timeout_s=0.5)
    t0 = time.monotonic()
    review = await r.review(CHECK, ALICE)
    assert review.unavailable and not review.allowed and time.monotonic() - t0 < 1.4
    api.stop()
    assert (await r.review(CHECK, ALICE)).unavailable
    assert r.asked == 2
