"""SubjectAccessReview delegation: may this OIDC caller do <verb> on <resource> in Kubernetes terms?

The caller's username and groups get the prefixes the API server's own OIDC settings use (``--oidc-username-
prefix``/``--oidc-groups-prefix``), so a RoleBinding written for people signing in to the cluster also grants MCP
access. Allow and deny are cached for ``cache_ttl_s``; an API server that does not answer (error, timeout) gives
an ``unavailable`` review, never cached, which the policy turns into a 503: fail closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from extproc.authn.principal import Principal
from extproc.kube.config import KubernetesAuthz, api_client
from extproc.policy.compiled import KubeCheck
from extproc.policy.facts import Review

log = logging.getLogger(__name__)
CACHE_MAX = 10_000

Key = tuple[KubeCheck, str, tuple[str, ...]]


class SubjectAccessReviewer:
    """Asks the API server (official client, in a thread) and caches the answers per check and identity."""

    def __init__(self, cfg: KubernetesAuthz, api: Any = None, clock: Callable[[], float] = time.monotonic) -> None:
        from kubernetes import client

        self.cfg = cfg
        self.authz = client.AuthorizationV1Api(api if api is not None else api_client(cfg))
        self.clock = clock
        self._cache: dict[Key, tuple[float, Review]] = {}
        self.asked = 0  # reviews sent to the API server (cache misses)

    async def review(self, check: KubeCheck, who: Principal) -> Review:
        """The cached answer, or a fresh SubjectAccessReview; ``unavailable`` when the API server fails."""
        user = self.cfg.username_prefix + who.username
        groups = tuple(self.cfg.groups_prefix + g for g in who.groups)
        key = (check, user, groups)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            r = hit[1]
            return Review(r.allowed, r.reason, cached=True)
        self.asked += 1
        timeout = self.cfg.request_timeout_s
        try:
            review = await asyncio.wait_for(asyncio.to_thread(self._ask, check, user, groups), timeout + 1)
        except Exception as e:  # timeout, refused, 5xx, 401: the API server gave no answer we can rely on
            log.warning("SubjectAccessReview for %s failed (%s: %s); denying (503)", user, type(e).__name__, e)
            return Review(False, f"API server did not answer ({type(e).__name__})", unavailable=True)
        if len(self._cache) >= CACHE_MAX:
            self._cache.clear()
        self._cache[key] = (now + self.cfg.cache_ttl_s, review)
        return review

    def _ask(self, check: KubeCheck, user: str, groups: tuple[str, ...]) -> Review:
        from kubernetes import client

        attrs = client.V1ResourceAttributes(
            verb=check.verb,
            group=check.group,
            resource=check.resource,
            name=check.name,
            namespace=check.namespace,
            subresource=check.subresource,
        )
        body = client.V1SubjectAccessReview(
            api_version="authorization.k8s.io/v1",
            kind="SubjectAccessReview",
            spec=client.V1SubjectAccessReviewSpec(user=user, groups=list(groups), resource_attributes=attrs),
        )
        out = self.authz.create_subject_access_review(body, _request_timeout=self.cfg.request_timeout_s)
        status = out.status
        if status is None:
            raise ValueError("SubjectAccessReview without status")
        reason = status.reason or status.evaluation_error or ""
        return Review(bool(status.allowed) and not status.denied, reason)


def from_settings(cfg: KubernetesAuthz | None) -> SubjectAccessReviewer | None:
    """A reviewer when gateway.yaml has a ``kubernetes`` section."""
    return SubjectAccessReviewer(cfg) if cfg is not None else None
