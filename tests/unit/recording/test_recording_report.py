"""`sessions list` at a terminal's common 80 columns: session ids stay whole, on one line."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from extproc.recording.report import sessions_table


def _row(session: str, user: str = "alice") -> dict:
    return {
        "session": session,
        "server": "github",
        "user": user,
        "started": 1_796_000_000.123,
        "exchanges": 12,
        "state": "complete",
        "verified": True,
        "signatures_checked": False,
    }


@pytest.mark.parametrize("width", [80, 100])
def test_session_ids_are_never_wrapped(width: int) -> None:
    rows = [
        _row("8f14e45fceea167a5a36dedd4bea2543"),
        _row("x-0d9c6b8e-5c1f-4c4e-9a53-0f0e2d9b7a11", user="https://idp.example.com/realms/corp#alice@example.com"),
    ]
    out = io.StringIO()
    Console(file=out, width=width, color_system=None).print(sessions_table(rows))

    text = out.getvalue()
    assert all(len(line) <= width for line in text.splitlines())
    for r in rows:
        assert r["session"] in text  # whole, on one line
    assert "11-30 00:53" in text and "github" in text and "complete" in text
