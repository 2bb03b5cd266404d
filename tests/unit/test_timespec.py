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


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("1m", 60), ("1.5h", 5400), ("1d", 86400), (" 7d ", 604800), ("366d", 366 * 86400)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1", "1w", "-1m", "0s", "367d", "1m30s", "m", "1" * 70 + "s"])
def test_bad_durations_name_the_form(text: str) -> None:
    with pytest.raises(ValueError, match=r"duration like 30s|longer than 0"):
        parse_duration(text)
