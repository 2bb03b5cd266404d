"""The ``export:`` section of gateway.yaml: where OCSF events go (file, Splunk HEC, syslog) and how hard to try."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from extproc.sections import Section, resolve_paths, split_hostport


class Delivery(Section):
    """How each sink buffers and retries; the request path never waits on it."""

    queue_size: Annotated[int, Field(ge=1, le=1_000_000)] = Field(
        default=10_000, description="events waiting per sink; past it new events are dropped (and counted)"
    )
    batch_size: Annotated[int, Field(ge=1, le=10_000)] = Field(default=500, description="events sent per write")
    linger_ms: Annotated[int, Field(ge=0, le=60_000)] = Field(
        default=200, description="how long a sink gathers events before a write that is not a full batch"
    )
    retry_initial_ms: Annotated[int, Field(ge=1, le=60_000)] = Field(
        default=200, description="first wait after a failed send; doubles up to retry_max_ms"
    )
    retry_max_ms: Annotated[int, Field(ge=1, le=600_000)] = 30_000


class FileSink(Section):
    """JSON lines, one OCSF event per line, rotated by size (``path.1`` is the newest rotated file)."""

    path: Path
    max_bytes: Annotated[int, Field(ge=1024)] = Field(default=100 << 20, description="rotate past this size")
    keep: Annotated[int, Field(ge=0, le=1000)] = Field(default=5, description="rotated files kept")

    def for_writer(self, writer: str) -> FileSink:
        """Each process appends and rotates a file of its own: ``ocsf.jsonl`` -> ``ocsf.worker-1.jsonl`` (processor
        workers), ``ocsf.audit.jsonl`` (the audit service). Two processes rotating one file would lose one."""
        if not writer:
            return self
        return self.model_copy(update={"path": self.path.with_name(f"{self.path.stem}.{writer}{self.path.suffix}")})


class HecSink(Section):
    """Splunk HTTP Event Collector (``/services/collector/event``), token read from a file."""

    url: str = Field(description="the collector's base URL, e.g. https://splunk:8088")
    token_file: Path = Field(description="file holding the HEC token (never the token itself in gateway.yaml)")
    index: str | None = None
    sourcetype: str = "ocsf:api_activity"
    ca_file: Path | None = Field(default=None, description="CA bundle for an https collector; default: system CAs")
    timeout_ms: Annotated[int, Field(ge=10, le=120_000)] = 5000

    @model_validator(mode="after")
    def _url(self) -> HecSink:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url: expected http:// or https://, got {self.url!r}")
        return self


class SyslogSink(Section):
    """RFC 5424 messages (the OCSF event as MSG) over TCP, octet-counted (RFC 6587); TLS per RFC 5425."""

    address: str = Field(description="host:port of the collector")
    tls: bool = False
    ca_file: Path | None = Field(default=None, description="CA bundle that signs the collector (tls)")
    facility: Annotated[int, Field(ge=0, le=23)] = Field(default=13, description="13: log audit")
    app_name: str = "mcp-extproc"

    @model_validator(mode="after")
    def _address(self) -> SyslogSink:
        split_hostport(self.address)
        return self


class Export(Section):
    """OCSF API Activity events (class 6003) for every exchange and audit access, with a proof pointer."""

    file: FileSink | None = None
    hec: HecSink | None = None
    syslog: SyslogSink | None = None
    delivery: Delivery = Delivery()
    include: tuple[Literal["exchanges", "audit"], ...] = Field(
        default=("exchanges", "audit"), description="which events are exported"
    )

    @model_validator(mode="after")
    def _some_sink(self) -> Export:
        if self.file is None and self.hec is None and self.syslog is None:
            raise ValueError("export: name at least one sink (file, hec or syslog)")
        return self

    @property
    def sinks(self) -> list[str]:
        return [name for name in ("file", "hec", "syslog") if getattr(self, name) is not None]

    def resolved(self, base: Path) -> Export:
        """Relative paths resolve against the config file's folder."""
        update: dict[str, Section] = {}
        if self.file is not None:
            update["file"] = resolve_paths(self.file, base, "path")
        if self.hec is not None:
            update["hec"] = resolve_paths(self.hec, base, "token_file", "ca_file")
        if self.syslog is not None:
            update["syslog"] = resolve_paths(self.syslog, base, "ca_file")
        return self.model_copy(update=update) if update else self
