"""The one time parser the CLI (``--since``) and the audit API/viewer (``since``, ``until``) share."""

from __future__ import annotations

import pytest

from extproc.timespec import parse_duration, parse_time

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("24h", NOW - 86_400, id="hours-ago"),
        pytest.param("7d", NOW - 7 * 86_400, id="days-ago"),
        pytest.param("30m", NOW - 1800, id="minutes-ago"),
        pytest.param("1.5h", NOW - 5400, id="fraction"),
        pytest.param("1764583200", 1764583200.0, id="unix-seconds"),
        pytest.param("2025-12-01T10:00:00Z", 1764583200.0, id="iso-z"),
        pytest.param("2025-12-01T11:00+01:00", 1764583200.0, id="iso-offset"),
        pytest.param("2025-12-01T10:00", 1764583200.0, id="naive-is-utc"),
        pytest.param(" 24h ", NOW - 86_400, id="spaces"),
    ],
)
def test_accepted_forms(text: str, expected: float) -> None:
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize(
    "text", ["yesterday", "-5", "nan", "inf", "24x", "h", "1e400", "", "1969-12-31T00:00Z", "999999999999", "9" * 200]
)
def test_refused_forms_name_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="24h"):
        parse_time(text, now=NOW)


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("1d", 86400.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0s", "", "2", "2w", "-1h", "1e9999d", "9" * 400 + "d"])
def test_refused_durations_name_the_form(text: str) -> None:
    with pytest.raises(ValueError, match="s, m, h or d"):
        parse_duration(text)
