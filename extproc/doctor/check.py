"""One line of `mcp-extproc doctor`'s report, and the timeout every live probe uses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Status = Literal["ok", "warn", "fail", "skip"]
TIMEOUT = 5.0


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: which part, how it is, what was seen, and how to fix it when it is not ok."""

    name: str
    status: Status
    detail: str
    hint: str = ""


def ok(name: str, detail: str) -> Check:
    return Check(name, "ok", detail)


def fail(name: str, detail: str, hint: str) -> Check:
    return Check(name, "fail", detail, hint)
