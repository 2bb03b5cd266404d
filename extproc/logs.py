"""Logging for every process we start: plain text for people, or one JSON object per line for log pipelines.

The access line (``access``) is one record per exchange with plain fields only: ids, who, where, what was
decided, status, time and sizes. It never carries header values, tokens, cookies, arguments or bodies; the
same field names appear in Envoy's JSON access log (``extproc/envoy/access_log.py``) so the two join on
``request_id``.
"""

from __future__ import annotations

import itertools
import json
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any, Literal, Protocol

LogFormat = Literal["text", "json"]
ACCESS = logging.getLogger("mcp_extproc.access")
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# LogRecord attributes that are not user fields: everything else given through ``extra`` is emitted as a field.
_BASE = logging.LogRecord("", 0, "", 0, "", (), None).__dict__
_STANDARD = frozenset(_BASE) | {"message", "asctime", "color_message"}


def _extra(record: logging.LogRecord) -> dict[str, Any]:
    # A record's own attributes come first in its __dict__, ``extra`` after them: only the tail is looked at.
    d = record.__dict__
    return {k: d[k] for k in itertools.islice(d, len(_BASE), None) if k not in _STANDARD and not k.startswith("_")}


class TextFormatter(logging.Formatter):
    """The classic line, followed by the record's extra fields as ``key=value`` (empty ones left out)."""

    def __init__(self) -> None:
        super().__init__(_TEXT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in _extra(record).items() if v not in ("", None))
        return f"{line} {extra}" if extra else line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, msg, the record's extra fields, exception."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_extra(record))
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str, separators=(",", ":"))


def _rfc3339(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


class _Direct:
    """The access line written straight to the stream of the handler ``setup`` installed, in that handler's
    format, without a LogRecord, the formatter's time lookups or the ``extra`` scan: about 30 µs less per
    exchange on the hot path. Used only while that handler is the one place the line would go (nothing added
    since: a test's capture handler, a filter, a handler on the access logger), else the line goes through
    ``logging`` as before."""

    def __init__(self, handler: logging.StreamHandler[Any], json_format: bool) -> None:
        self.handler = handler
        self.json = json_format
        self._second = -1
        self._stamp = ""

    def usable(self, root: logging.Logger) -> bool:
        h = self.handler
        return (
            len(root.handlers) == 1
            and root.handlers[0] is h
            and not ACCESS.handlers
            and ACCESS.propagate
            and not ACCESS.filters
            and not root.filters
            and not h.filters
            and h.level <= logging.INFO
        )

    def line(self, fields: dict[str, Any], now: float) -> str:
        """The line the handler's formatter would have written for ``ACCESS.info("access", extra=fields)``."""
        if self.json:
            doc = {"time": _rfc3339(now), "level": "info", "logger": ACCESS.name, "msg": "access", **fields}
            return json.dumps(doc, ensure_ascii=False, default=str, separators=(",", ":"))
        second = int(now)
        if second != self._second:  # logging.Formatter.formatTime, once per second
            self._second, self._stamp = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        extra = " ".join(f"{k}={v}" for k, v in fields.items() if v not in ("", None))
        head = f"{self._stamp},{int((now - second) * 1000):03d} INFO {ACCESS.name}: access"
        return f"{head} {extra}" if extra else head

    def write(self, fields: dict[str, Any]) -> bool:
        """Write the line; False when it could not be (the caller sends it through ``logging``, which reports)."""
        h = self.handler
        try:
            text = self.line(fields, time.time()) + h.terminator
            h.acquire()
            try:
                h.stream.write(text)
                h.flush()
            finally:
                h.release()
        except Exception:  # an unwritable stream: logging's own path reports it, as for any line
            return False
        return True


_DIRECT: _Direct | None = None


def setup(log_format: LogFormat = "text", verbose: bool = False) -> None:
    """Configure the root logger on stderr once per process (replacing handlers a library may have added)."""
    global _DIRECT
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    _DIRECT = _Direct(handler, log_format == "json")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Neither format prints the caller's file, line, thread or process: do not look them up for every record (the
    # access line is written once per exchange, on the hot path).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    for noisy in ("httpx", "httpcore", "botocore", "boto3", "urllib3"):  # their INFO lines carry full URLs
        logging.getLogger(noisy).setLevel(logging.WARNING)


def access(
    *,
    exchange: str,
    request_id: str = "",
    session: str | None = None,
    user: str = "",
    server: str = "",
    methods: Sequence[str] = (),
    tools: Sequence[str] = (),
    decision: str = "",
    rule: str = "",
    status: int = 0,
    outcome: str = "",
    duration_ms: float = 0.0,
    bytes_in: int = 0,
    bytes_out: int = 0,
    detail: str = "",
    guardrail_ms: float | None = None,
) -> None:
    """Log the access line of one finished exchange (called once, from the exchange's end); ``guardrail_ms`` only
    when the server's outside guardrail was asked."""
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    fields = {
        "exchange": exchange,
        "request_id": request_id,
        "session": session or "",
        "user": user,
        "server": server,
        "mcp_method": ",".join(methods),
        "tool": ",".join(tools),
        "decision": decision,
        "rule": rule,
        "status": status,
        "outcome": outcome,
        "duration_ms": round(duration_ms, 3),
        "bytes_in": bytes_in,
        "bytes_out": bytes_out,
        "detail": detail,
    }
    if guardrail_ms is not None:
        fields["guardrail_ms"] = round(guardrail_ms, 3)
    direct = _DIRECT
    if direct is not None and direct.usable(logging.root) and direct.write(fields):
        return
    ACCESS.info("access", extra=fields)


class _Decided(Protocol):
    @property
    def allowed(self) -> bool: ...
    @property
    def rule(self) -> str: ...


class _Call(Protocol):
    @property
    def method(self) -> str: ...
    @property
    def tool(self) -> str | None: ...


class _Verdict(Protocol):
    @property
    def calls(self) -> Sequence[_Call]: ...
    @property
    def decisions(self) -> Sequence[_Decided]: ...


def verdict_fields(verdict: _Verdict | None) -> dict[str, Any]:
    """methods, tools, decision and rule of a body's policy verdict (the first deny decides, as it did)."""
    if verdict is None:
        return {}
    denied = next((d for d in verdict.decisions if not d.allowed), None)
    last = denied or (verdict.decisions[-1] if verdict.decisions else None)
    return {
        "methods": [c.method for c in verdict.calls],
        "tools": [c.tool for c in verdict.calls if c.tool],
        "decision": "" if last is None else ("allow" if last.allowed else "deny"),
        "rule": "" if last is None else last.rule,
    }
