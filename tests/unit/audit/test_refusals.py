"""A call the gateway refused carries its refusal in the session document the CLI prints and the API serves."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import session_segments

from extproc.audit.summary import summarize
from extproc.recording.replay import load_session
from extproc.recording.report import session_doc
from extproc.recording.store.file import FileStore


async def test_refused_calls_carry_status_rule_and_answer(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "rec")
    for seg in session_segments("s1", server="alpha", user="bob", started=100.0, tools=("echo", "rm"), denied=("rm",)):
        await store.put_segment(seg)
    session = load_session(store, "s1")
    calls = {c["request"]["params"]["name"]: c for c in session_doc(session)["calls"]}
    assert calls["echo"]["refusal"] is None
    refusal = calls["rm"]["refusal"]
    assert refusal.pop("time") == pytest.approx(100.12)
    assert refusal == {
        "status": 403,
        "detail": "denied by policy rule 'no-rm': tools/call rm",
        "rule": "no-rm",
        "reason": "denied",
    }
    assert summarize("s1", session).denied == 1
