"""The ``telemetry:`` section of gateway.yaml: OpenTelemetry traces of exchanges, and the viewer's trace links."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from extproc.sections import Section


class Telemetry(Section):
    """Traces over OTLP/HTTP (off unless ``endpoint`` is set); ``trace_link`` turns trace ids into links."""

    endpoint: str | None = Field(
        default=None, description="OTLP/HTTP traces URL, e.g. http://otel-collector:4318/v1/traces; unset: no traces"
    )
    service_name: str = "mcp-extproc"
    sample_ratio: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        default=1.0, description="share of new traces sampled; a client's sampled flag is followed (parent-based)"
    )
    timeout_ms: Annotated[int, Field(ge=10, le=120_000)] = 5000
    compression: Literal["none", "gzip"] = Field(
        default="none", description="gzip: span batches sent with Content-Encoding: gzip (less network, more CPU)"
    )
    retries: Annotated[int, Field(ge=0, le=10)] = Field(
        default=3, description="tries again after 429/502/503/504 or a connection failure, backing off (Retry-After)"
    )
    retry_initial_ms: Annotated[int, Field(ge=1, le=60_000)] = Field(
        default=500, description="first wait before a retry; doubles on each further one"
    )
    trace_link: str | None = Field(
        default=None,
        description="URL template the viewer shows for an exchange's trace, e.g. http://jaeger:16686/trace/{trace_id}",
    )

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {v!r}")
        return v

    @field_validator("trace_link")
    @classmethod
    def _link(cls, v: str | None) -> str | None:
        if v is not None and ("{trace_id}" not in v or not v.startswith(("http://", "https://"))):
            raise ValueError("must be an http:// or https:// URL containing {trace_id}")
        return v
