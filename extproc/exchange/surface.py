"""The exchange's side of tool-surface integrity (extproc/tools/surface.py does the judging).

On the call path, each call that uses a listed item (a tool, a prompt, a resource) is checked against the
definition its caller was last shown; on the list path, each list result is fingerprinted, screened and judged
against the pins, and pins first seen or changed are signed and written once the response is through.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from extproc.mcp.jsonrpc import McpCall
from extproc.policy.compiled import CompiledPolicy
from extproc.recording.exchange_log import ExchangeLog
from extproc.tools.fingerprint import KINDS
from extproc.tools.pins import PinFile, scope
from extproc.tools.surface import Surface

log = logging.getLogger(__name__)

_USES = frozenset(k.use for k in KINDS.values() if k.use)  # calls that use a listed item
_TEMPLATES = "resources/templates/list"


class SurfaceCheck:
    """Tool-surface integrity for one exchange; does nothing when the gateway has no surface configured."""

    def __init__(self, surface: Surface | None, exchange_id: str, log: ExchangeLog, clock: Callable[[], float]) -> None:
        self.surface = surface
        self._id = exchange_id
        self._log = log
        self._clock = clock
        self._pins: list[PinFile] = []  # pins the list path wants signed and written (extproc/tools/)
        self.backend: str | None = None  # the identity-scoped backend admission chose: its surface is its own

    async def check_calls(
        self, policy: CompiledPolicy, server: str, session: str | None, calls: tuple[McpCall, ...]
    ) -> tuple[str | None, dict[int, dict[str, Any]]]:
        """Per call, the definition it was last shown (recorded with its decision), and why it is refused when its
        item is hidden or its server blocked."""
        surface = self.surface
        if surface is None or not any(c.method in _USES for c in calls):
            return None, {}
        server = scope(server, self.backend)
        if surface.pins is not None and surface.needs_pins(server):
            await surface.pins.refresh(server)  # one stat: an approval counts at once
        shown: dict[int, dict[str, Any]] = {}
        refused = None
        for i, c in enumerate(calls):
            why, record = surface.check_call(policy, server, c.method, c.tool or c.prompt or c.uri, session)
            if record is not None:
                shown[i] = record
            refused = refused or why
        return refused, shown

    def templates(self, calls: tuple[McpCall, ...]) -> dict[str, str]:
        """Resource-template lists to review: not filtered per caller, but fingerprinted (by JSON-RPC id)."""
        if self.surface is None:
            return {}
        return {json.dumps(c.id): c.method for c in calls if c.method == _TEMPLATES and c.id is not None}

    async def refresh_pins(self, server: str) -> None:
        """Before a list is judged: against today's pins."""
        if self.surface is not None and self.surface.pins is not None:
            await self.surface.pins.refresh(scope(server, self.backend))

    def review_list(
        self, policy: CompiledPolicy, server: str, unit: str, method: str, result: dict[str, Any]
    ) -> dict[str, Any]:
        """One list result fingerprinted, screened and judged against the pins; its events go on the record."""
        assert self.surface is not None
        review = self.surface.review_list(policy, scope(server, self.backend), method, result, unit, self._clock())
        for ev in review.events:
            self._log.emit(ev)
        self._pins.extend(review.pins)
        return review.result

    async def save_pins(self) -> None:
        """Pins first seen or changed, signed and written off the loop; a failure is logged, never the caller's."""
        pins, self._pins = self._pins, []
        if not pins or self.surface is None or self.surface.pins is None:
            return
        try:
            await self.surface.pins.save(pins)
        except OSError as e:
            log.error("exchange %s: cannot write %d pins: %s", self._id, len(pins), e)
