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
    """``90s``, ``15m``, ``2h``, ``1d`` -> seconds (more than 0); ValueError naming the form otherwise."""
    m = _DURATION.match(text.strip()[:_MAX_CHARS])
    seconds = float(m["n"]) * _UNITS[m["unit"]] if m is not None else 0.0
    if m is None or not 0 < seconds < math.inf:
        raise ValueError(f"duration {text!r}: use a number more than 0 and s, m, h or d (e.g. 90s, 15m, 2h, 1d)")
    return seconds
