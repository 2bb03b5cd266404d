"""One parser for the times people type (``--since`` on the CLI, ``since``/``until`` in the audit API and viewer)."""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

_DURATION = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>[smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_LAST = 253402300799.0  # 9999-12-31T23:59:59Z: the last time a calendar (and Python's datetime) can name
_MAX_CHARS = 64  # the longest form above is about 35 characters
FORMS = "an ISO time (2026-12-01T10:00Z; no zone = UTC), Unix seconds, or an age like 30m, 24h, 7d"


def parse_time(text: str, now: float | None = None) -> float:
    """``2026-12-01T10:00:00Z`` (naive = UTC), ``1764583200`` (Unix seconds) or ``24h`` / ``7d`` / ``30m`` ago.

    Raises ValueError naming the accepted forms; never returns a time before 1970 or after 9999."""
    text = text.strip()
    if len(text) > _MAX_CHARS:
        raise ValueError(f"{text[:20]!r}...: longer than {_MAX_CHARS} characters ({FORMS})")
    if (m := _DURATION.match(text)) is not None:
        t = (now if now is not None else time.time()) - float(m["n"]) * _UNITS[m["unit"]]
    else:
        try:
            t = float(text)
        except ValueError:
            try:
                when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            except ValueError:
                raise ValueError(f"{text!r}: give {FORMS}") from None
            t = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    if not math.isfinite(t) or t < 0 or t > _LAST:
        raise ValueError(f"{text!r}: must be a time from 1970 to 9999 ({FORMS})")
    return t


def parse_duration(text: str) -> float:
    """A length of time in seconds: ``30s``, ``1m``, ``1.5h``, ``1d`` (policy limits' ``per``, approvals' ``ttl``).

    Raises ValueError naming the form; zero and longer than a year are refused (a limit's window, not a date)."""
    m = _DURATION.match(text.strip()) if len(text) <= _MAX_CHARS else None
    if m is None:
        raise ValueError(f"{text[:20]!r}: give a duration like 30s, 1m, 1h or 1d")
    seconds = float(m["n"]) * _UNITS[m["unit"]]
    if not 0 < seconds <= 366 * 86400:
        raise ValueError(f"{text!r}: must be longer than 0 and at most 366d")
    return seconds
