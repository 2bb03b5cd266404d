"""Everything an exchange needs, built once at start-up and shared by every stream of a processor."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from extproc.controls.budgets import Budgets, LocalCounter
from extproc.controls.hold import Approvals
from extproc.mcp.param_headers import ParamHeaderMaps
from extproc.mcp.protocol import RunTracker
from extproc.metrics import Metrics
from extproc.overload import LagMonitor
from extproc.policy.facts import GrantSource, Reviewer
from extproc.ports import Authenticator, EventSink, PolicySource
from extproc.routing import Router
from extproc.runtime import ExchangeOptions, compile_options
from extproc.settings import Settings
from extproc.tools.guardrail import Guardrails
from extproc.tools.surface import Surface
from extproc.upstream.credentials import Upstream

if TYPE_CHECKING:
    from extproc.telemetry.tracing import Tracing


def exchange_ids() -> Callable[[], str]:
    """Exchange ids unique across processes without a system call each: 64 random bits per process, then a counter
    (32 hex characters, like a UUID)."""
    prefix = secrets.token_hex(8)
    counter = itertools.count(1)
    return lambda: f"{prefix}{next(counter):016x}"


@dataclass
class Gateway:
    """Options, router and the collaborators behind their ports; clock and id generator injectable for tests."""

    options: ExchangeOptions
    sink: EventSink  # the recorder
    router: Router
    auth: Authenticator | None = None  # None: anonymous (allow_anonymous)
    policy: PolicySource | None = None  # exchanges read ``policy.current`` once each
    metrics: Metrics = field(default_factory=Metrics)
    runs: RunTracker = field(default_factory=lambda: RunTracker(300.0))  # recording units of stateless traffic
    param_headers: ParamHeaderMaps = field(default_factory=ParamHeaderMaps)  # x-mcp-header maps of listed tools
    reviewer: Reviewer | None = None  # Kubernetes SubjectAccessReviews for rules that require them
    grants: GrantSource | None = None  # signed just-in-time grants
    upstream: Upstream | None = None  # credentials toward servers with upstream_auth (None: no server has one)
    budgets: Budgets = field(default_factory=lambda: Budgets(LocalCounter()))  # policy limits' counters

    approvals: Approvals | None = None  # held calls and their approvals (effect: approve); None: refused (503)

    surface: Surface | None = None  # tool-surface integrity: pins, screens, what each unit was shown
    guardrails: Guardrails | None = None  # outside guardrails of servers that have one (None: no server has one)
    tracing: Tracing | None = None  # OpenTelemetry spans per exchange (extproc/telemetry/); None: off
    overload: LagMonitor = field(default_factory=lambda: LagMonitor(0.0))  # load shedding (off unless built)
    clock: Callable[[], float] = time.time
    new_id: Callable[[], str] = field(default_factory=lambda: exchange_ids())

    @classmethod
    def build(
        cls,
        settings: Settings,
        sink: EventSink,
        auth: Authenticator | None = None,
        policy: PolicySource | None = None,
        router: Router | None = None,
    ) -> Gateway:
        """Compile ``settings`` once and wire the parts."""
        options = compile_options(settings)
        return cls(
            options=options,
            sink=sink,
            router=router or Router(settings),
            auth=auth,
            policy=policy,
            runs=RunTracker(options.run_idle_gap_s, options.session_key),
            overload=LagMonitor(settings.limits.shed_lag_ms / 1000),
        )
