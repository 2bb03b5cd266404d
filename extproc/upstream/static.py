"""``upstream_auth: {kind: static}``: one service credential for every caller, from a file that may be rotated."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from extproc.authn.principal import Principal
from extproc.errors import UpstreamIdentityUnavailable
from extproc.upstream.base import ExchangeContext, UpstreamCredential, digest, emit, named
from extproc.upstream.config import Static
from extproc.upstream.files import WatchedFile

log = logging.getLogger(__name__)


class StaticCredential:
    """The file's current content in ``header``; an unreadable file refuses the request (503), never sends none."""

    kind = "static"

    def __init__(self, cfg: Static, clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.file = WatchedFile(cfg.file, clock, cfg.check_interval_s)
        self._sha = ("", "")  # (value, its digest): hashed once per rotation, not per request

    async def headers_for(self, principal: Principal | None, server: str, ctx: ExchangeContext) -> dict[str, str]:
        """``{header: prefix + credential}``."""
        try:
            value = self.file.value()
        except (OSError, ValueError) as e:
            log.error("server %s: static credential %s unreadable: %s", server, self.cfg.file, e)
            refused = {"error": "credential_file", "description": f"{type(e).__name__}: {e}"[:500]}
            emit(ctx, UpstreamCredential(server=server, kind=self.kind, header=self.cfg.header, refused=refused))
            raise UpstreamIdentityUnavailable(str(e), ctx.request_id or ctx.exchange_id) from None
        if self._sha[0] != value:
            self._sha = (value, digest(value))
        if not named(ctx, server, self.kind, self._sha[1], None, False):
            emit(ctx, UpstreamCredential(server=server, kind=self.kind, header=self.cfg.header, sha256=self._sha[1]))
        return {self.cfg.header: self.cfg.prefix + value}
