"""Bounded storage: recording level per server, a per-event body cap, and retention for the file store.

- Levels: ``full`` (default) records everything; ``metadata`` keeps who, method, tool, decision, status, sizes
  and SHA-256 of bodies, never payloads; ``off`` records nothing for that server, allowed only with
  ``recording.off_acknowledged`` (a reason), which every processor logs at start.
- Cap: a body (request, response, SSE event, chunk) over ``recording.max_event_body_bytes`` is kept as size and
  SHA-256 only, whatever the level; the JSON-RPC method, id and tool stay so the exchange still reads.
- Retention (file store): sessions untouched for ``max_age_days``, then the least recently written ones while
  the store is over ``max_total_bytes``, are deleted. Each deletion is itself recorded (``retention.deleted``
  in session ``mcp-extproc-retention``) with the SHA-256 of the deleted manifests, so the digest chain explains
  every missing session.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from extproc.recording.events import (
    Event,
    ExchangeEnd,
    ExchangeStart,
    McpRequest,
    McpResponse,
    ResponseChunk,
    body_bytes,
)
from extproc.recording.recorder import Recorder
from extproc.recording.shred import PayloadSealer
from extproc.reserved import RETENTION_SESSION
from extproc.tasks import cancel

log = logging.getLogger(__name__)
_KEEP_PARAMS = ("name", "uri")  # what a metadata record keeps of params: the tool, prompt or resource named


def _sha(fields: dict[str, Any], messages: list[dict[str, Any]]) -> str:
    raw = body_bytes(fields) if ("raw" in fields or "raw_b64" in fields) else None
    if raw is None:  # redacted or withheld before: hash what was kept, never more
        raw = json.dumps([fields, messages], sort_keys=True, default=str).encode()
    return hashlib.sha256(raw).hexdigest()


def _outline(msg: dict[str, Any]) -> dict[str, Any]:
    """A JSON-RPC message without payload: jsonrpc, id, method, the tool/resource name, an error's code."""
    out: dict[str, Any] = {k: msg[k] for k in ("jsonrpc", "id", "method") if k in msg}
    params = msg.get("params")
    if isinstance(params, dict):
        kept = {k: params[k] for k in _KEEP_PARAMS if isinstance(params.get(k), str)}
        if kept:
            out["params"] = kept
    if isinstance(msg.get("error"), dict):
        out["error"] = {"code": msg["error"].get("code")}
    if "result" in msg:
        out["result_omitted"] = True
    return out


_BODIES = (McpRequest, McpResponse, ResponseChunk)


class RecordingLevels:
    """Applies the per-server level and the body cap to events before they are queued (O(event))."""

    def __init__(self, levels: dict[str, str], max_body: int) -> None:
        self.levels = levels
        self.max_body = max_body
        self._by_exchange: dict[str, str] = {}  # only exchanges of servers below `full`: empty by default

    def apply(self, ev: Event) -> Event | None:
        """The event to record (maybe reduced), or None to record nothing."""
        if not self.levels:  # every server at `full` (the default): only the body cap, checked on bodies alone
            if isinstance(ev, _BODIES) and ev.size > self.max_body:
                self._reduce(ev, "over recording.max_event_body_bytes")
            return ev
        if isinstance(ev, ExchangeStart):
            level = self.levels.get(ev.server, "full")
            if level != "full":
                self._by_exchange[ev.exchange] = level
            if level == "metadata":  # the session says what it was recorded at (policy/capture.py names the levels)
                ev.capture = "metadata"
        else:
            level = self._by_exchange.get(ev.exchange, "full")
        if isinstance(ev, ExchangeEnd):
            self._by_exchange.pop(ev.exchange, None)
        if level == "off":
            return None
        if isinstance(ev, McpRequest | McpResponse | ResponseChunk):
            if level == "metadata" or ev.size > self.max_body:
                why = "recording level metadata" if level == "metadata" else "over recording.max_event_body_bytes"
                self._reduce(ev, why)
        return ev

    @staticmethod
    def _reduce(ev: McpRequest | McpResponse | ResponseChunk, why: str) -> None:
        messages = getattr(ev, "messages", [])
        if "withheld" in ev.body and "sha256" in ev.body:  # withheld before (too big to hold): its hash is of the bytes
            why, digest = ev.body["withheld"], ev.body["sha256"]
        else:
            digest = _sha(ev.body, messages)
        ev.body = {"withheld": why, "sha256": digest}
        if isinstance(ev, McpRequest | McpResponse):
            ev.messages = [_outline(m) for m in messages if isinstance(m, dict)]


class BoundedRecorder(Recorder):
    """The recorder with levels and the body cap applied to every event it is given, then (``sealer``) its payload
    fields encrypted with its subject's data key (``shred.py``): the chain is computed over the ciphertext."""

    def __init__(self, *args: Any, levels: RecordingLevels, sealer: PayloadSealer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.levels = levels
        self.sealer = sealer

    def emit(self, event: Event) -> bool:
        kept = self.levels.apply(event)
        if kept is None:
            return True
        if self.sealer is not None:
            try:
                self.sealer.seal(kept)
            except Exception:  # fail closed: a payload that cannot be sealed is not recorded in the clear
                log.exception("cannot seal the payload of %s %s; event not recorded", kept.type, kept.exchange)
                self.lost_events += 1
                return False
        return super().emit(kept)


def log_unrecorded(levels: dict[str, str], reason: str) -> None:
    """Say at every start which servers are not recorded, and why (the opt-out is never silent)."""
    off = sorted(name for name, level in levels.items() if level == "off")
    if off:
        log.warning("recording OFF for server(s) %s: exchanges leave no record (%s)", ", ".join(off), reason)
    meta = sorted(name for name, level in levels.items() if level == "metadata")
    if meta:
        log.info("recording metadata only (no payloads) for server(s) %s", ", ".join(meta))


# --- retention of the file store ---------------------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class RetentionDeleted(Event):
    """A stored session deleted by retention: what it held, and the digest of its manifests at deletion."""

    type: ClassVar[str] = "retention.deleted"
    deleted_session: str = ""
    reason: Literal["", "age", "size"] = ""
    files: list[str] = field(default_factory=list)
    bytes: int = 0
    last_written: float = 0.0
    manifests_sha256: dict[str, str] = field(default_factory=dict)  # writer -> SHA-256 of its manifests file


@dataclass(frozen=True, slots=True)
class _Stored:
    path: Path
    size: int
    last_written: float


class Retention:
    """Deletes whole sessions of a file store by age, then by total size; records each deletion first."""

    def __init__(
        self,
        root: Path,
        emit: Callable[[Event], bool],
        *,
        max_age_s: float | None,
        max_total_bytes: int | None,
        interval: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.emit = emit
        self.max_age_s = max_age_s
        self.max_total_bytes = max_total_bytes
        self.interval = interval
        self.clock = clock
        self.deleted = 0
        self._index = 0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel(task)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.sweep)
            except Exception:  # a failed sweep is retried next round; recordings are never at stake
                log.exception("retention sweep failed")
            await asyncio.sleep(self.interval)

    def _sessions(self) -> list[_Stored]:
        out = []
        for folder in self.root.iterdir() if self.root.is_dir() else []:
            if not folder.is_dir() or folder.name.startswith(".") or folder.name == RETENTION_SESSION:
                continue
            stats = [p.stat() for p in folder.iterdir() if p.is_file()]
            if stats:
                out.append(_Stored(folder, sum(s.st_size for s in stats), max(s.st_mtime for s in stats)))
        return sorted(out, key=lambda s: s.last_written)

    def sweep(self) -> int:
        """One pass; returns how many sessions were deleted. One process at a time (a lock file in the root)."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".retention.lock", "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # another worker is sweeping
            sessions = self._sessions()
            total = sum(s.size for s in sessions)
            now, deleted = self.clock(), 0
            reason: Literal["age", "size"]
            for s in sessions:
                if self.max_age_s is not None and now - s.last_written > self.max_age_s:
                    reason = "age"
                elif self.max_total_bytes is not None and total > self.max_total_bytes:
                    reason = "size"
                else:
                    continue
                if not self._delete(s, reason):
                    break  # the deletion could not be recorded: delete nothing unexplained
                total -= s.size
                deleted += 1
            self.deleted += deleted
            return deleted

    def _delete(self, s: _Stored, reason: Literal["age", "size"]) -> bool:
        files = sorted(p.name for p in s.path.iterdir())
        digests = {
            p.name.removesuffix(".manifests"): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(s.path.glob("*.manifests"))
        }
        ev = RetentionDeleted(
            session=RETENTION_SESSION,
            exchange="retention",
            index=self._index,
            time=self.clock(),
            deleted_session=s.path.name,
            reason=reason,
            files=files,
            bytes=s.size,
            last_written=s.last_written,
            manifests_sha256=digests,
        )
        if not self.emit(ev):
            log.error("retention: cannot record the deletion of %s (queue full); keeping it", s.path.name)
            return False
        self._index += 1
        shutil.rmtree(s.path, ignore_errors=True)
        log.info("retention deleted session %s (%s, %d bytes)", s.path.name, reason, s.size)
        return True
