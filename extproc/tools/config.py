"""``servers[].guardrail`` in gateway.yaml: an outside service asked about each call before it goes upstream."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from extproc.sections import Section

GuardedMethod = Literal["tools/call", "prompts/get", "resources/read"]


def _tools_call() -> list[GuardedMethod]:
    return ["tools/call"]


class Guardrail(Section):
    """An HTTP endpoint that answers allow, deny or modify for each call the policy allowed (extproc/tools/
    guardrail.py documents the JSON it is sent and must answer). Fail closed by default: no answer in time, or an
    answer that is not one of those, refuses the call."""

    url: str = Field(description="http(s) URL the gateway POSTs each call to")
    timeout_ms: int = Field(default=500, ge=1, le=10_000, description="the whole answer within this, or on_error")
    on_error: Literal["closed", "open"] = Field(
        default="closed", description="no valid answer in time: closed refuses the call (503), open lets it pass"
    )
    methods: list[GuardedMethod] = Field(
        default_factory=_tools_call, min_length=1, description="the calls it is asked about"
    )
    results: bool = Field(
        default=False,
        description="also ask about each result of those calls before the client gets it (allow, deny: an error in "
        "its place, modify: the guardrail's result in its place); a JSON body is then buffered, an SSE result's "
        "event held until complete",
    )
    token_file: Path | None = Field(
        default=None, description="a bearer token for the guardrail (absolute path; re-read on every start)"
    )

    @field_validator("token_file")
    @classmethod
    def _absolute(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError(f"{v}: must be an absolute path")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or len(v) > 2048:
            raise ValueError("must be an http:// or https:// URL")
        return v
