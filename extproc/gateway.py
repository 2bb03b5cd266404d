"""Everything an exchange needs, built once at start-up and shared by every stream of a processor."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from extproc.authn.challenge import protected_resource_metadata, resource_metadata_url
from extproc.authn.session_binding import load_key
from extproc.authn.verify import Authenticator
from extproc.metrics import Metrics
from extproc.policy.facts import GrantSource, Reviewer
from extproc.policy.loader import PolicyWatcher
from extproc.recording.recorder import Recorder
from extproc.routing import Router
from extproc.settings import Settings


@dataclass
class Gateway:
    """Config, router, authenticator and recorder; clock and id generator injectable for tests."""

    settings: Settings
    recorder: Recorder
    router: Router
    auth: Authenticator | None = None
    policy: PolicyWatcher | None = None  # exchanges read ``policy.current`` once each
    metrics: Metrics = field(default_factory=Metrics)
    reviewer: Reviewer | None = None  # Kubernetes SubjectAccessReviews for rules that require them
    grants: GrantSource | None = None  # signed just-in-time grants
    session_key: bytes = b""
    metadata_url: str = ""
    metadata_path: str = ""  # the path Envoy sees for metadata_url (RFC 9728 puts public_url's path after it)
    metadata: dict[str, object] = field(default_factory=dict)
    clock: Callable[[], float] = time.time
    new_id: Callable[[], str] = field(default=lambda: uuid.uuid4().hex)

    @classmethod
    def build(
        cls,
        settings: Settings,
        recorder: Recorder,
        auth: Authenticator | None = None,
        policy: PolicyWatcher | None = None,
    ) -> Gateway:
        gw = cls(settings=settings, recorder=recorder, router=Router(settings), auth=auth, policy=policy)
        gw.metrics.watch(gw)
        if settings.auth is not None:
            gw.session_key = load_key(settings.auth.session_secret_file)
            gw.metadata_url = resource_metadata_url(settings.auth)
            gw.metadata_path = urlsplit(gw.metadata_url).path
            gw.metadata = protected_resource_metadata(settings.auth)
        return gw
