"""The sections of gateway.yaml that become Envoy's config: listen, processor, admin, servers, limits and edge."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from extproc.authn.config import origin_of
from extproc.policy.model import Subjects
from extproc.sections import Port, Section, absolute, split_hostport
from extproc.tools.config import Guardrail
from extproc.upstream.config import UpstreamAuth

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+/?$")
_AUTHORITY = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")


class ListenTls(Section):
    """TLS on Envoy's listener. The files are re-read when they change (SDS from files), no restart needed."""

    cert_file: Path = Field(description="PEM certificate chain, leaf first (absolute path)")
    key_file: Path = Field(description="PEM private key (absolute path)")
    client_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle; with it clients may present certificates (mTLS)"
    )
    require_client_cert: bool = Field(
        default=False, description="refuse clients without a certificate (needs client_ca_file)"
    )
    watch_directory: Path | None = Field(
        default=None,
        description="watched for changes: a rotation replaces the files there (cert-manager and the kubelet swap a "
        "symlink); default: the folder of cert_file",
    )

    _paths = field_validator("cert_file", "key_file", "client_ca_file", "watch_directory")(absolute)

    @model_validator(mode="after")
    def _client_ca(self) -> ListenTls:
        if self.require_client_cert and self.client_ca_file is None:
            raise ValueError("require_client_cert: needs client_ca_file (the CA bundle client certificates chain to)")
        return self


class Listen(Section):
    """Envoy's listener for MCP clients."""

    address: str = "127.0.0.1"
    port: Port = 8080
    allowed_origins: list[str] = Field(
        default=[],
        description="browser Origins allowed to call besides the gateway's own (auth.public_url's, or without auth "
        "the listen address's); any other Origin gets 403 in every mode. Requests without an Origin (non-browser) "
        "pass",
    )
    tls: ListenTls | None = None

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for o in v:
            if not _ORIGIN.match(o):
                raise ValueError(f"origin {o!r} must look like scheme://host[:port]")
        return [origin_of(o) for o in v]


class ProcessorTls(Section):
    """Envoy <-> processor over TCP with mutual TLS (when they are on different hosts; a Unix socket otherwise)."""

    cert_file: Path = Field(description="the processor's server certificate")
    key_file: Path
    ca_file: Path = Field(description="CA bundle both sides check the other's certificate against")
    client_cert_file: Path = Field(description="Envoy's client certificate")
    client_key_file: Path
    server_name: str = Field(
        default="", description="SNI and the SAN Envoy expects in the processor's certificate; default: its host"
    )

    _paths = field_validator("cert_file", "key_file", "ca_file", "client_cert_file", "client_key_file")(absolute)


class Processor(Section):
    """Where Envoy reaches the processor: 'host:port' or 'unix:/path/to.sock'."""

    address: str = "127.0.0.1:50051"
    message_timeout_ms: Annotated[
        int, Field(ge=10, le=60_000, description="Envoy's per-message timeout for the processor")
    ] = 5000
    workers: Annotated[int, Field(ge=1, le=64, description="processor processes, each on port+i or socket.i")] = 1
    event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="the processor's event loop: uvloop (grpc.aio runs on it: about 0.2 ms less CPU per exchange) "
        "or the standard library's asyncio",
    )
    metrics_port: Port | None = Field(
        default=None, description="Prometheus /metrics of worker i on metrics_port + i; off when unset"
    )
    metrics_address: str = "127.0.0.1"
    tls: ProcessorTls | None = None

    @model_validator(mode="after")
    def _tls_over_tcp(self) -> Processor:
        if self.tls is not None and self.unix_path:
            raise ValueError("tls: only over TCP; a Unix socket is reachable only inside the pod or host")
        return self

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v.startswith("unix:"):
            if not v[5:].startswith("/"):
                raise ValueError("unix socket path must be absolute, e.g. unix:/run/mcp-extproc.sock")
            return v
        split_hostport(v)
        return v

    @property
    def unix_path(self) -> str | None:
        return self.address[5:] if self.address.startswith("unix:") else None

    def endpoint(self, worker: int = 0) -> str:
        """Worker ``worker``'s gRPC address: ``unix:/path[.i]`` or ``host:port+i`` (the one numbering of workers,
        used by the processor to bind, by the launcher to wait for it and by the Envoy bootstrap)."""
        if self.unix_path:
            return self.address if self.workers == 1 else f"{self.address}.{worker}"
        host, _, port = self.address.rpartition(":")
        return f"{host}:{int(port) + worker}"


class Backend(Section):
    """One upstream of a server, reached only by callers matching ``subjects`` (the policy's subject syntax)."""

    name: str
    upstream: str
    path: str | None = Field(default=None, description="default: the server's path")
    subjects: Subjects
    upstream_auth: UpstreamAuth | None = Field(
        default=None,
        description="how the gateway authenticates to this backend for the caller; default: the server's "
        "upstream_auth (a backend that is another deployment often needs its own audience)",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be lowercase letters, digits and '-', at most 63 characters")
        return v

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str) -> str:
        split_hostport(v)
        return v


class Stdio(Section):
    """A stdio MCP server run behind a kept bridge (mcp-proxy from PyPI by default, or supergateway from npm) that
    serves it as Streamable HTTP on loopback ``port``; `up` starts and supervises both (extproc/stdio.py). In
    Compose and Kubernetes, run the bridge as a sidecar instead and give the server an ``upstream``."""

    command: list[str] = Field(min_length=1, description="the server's command line, e.g. [npx, -y, some-mcp-server]")
    port: Port = Field(description="the loopback port the bridge listens on (the server's upstream)")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment for the server")
    bridge: Literal["mcp-proxy", "supergateway"] = Field(
        default="mcp-proxy", description="mcp-proxy (PyPI, in a virtualenv of its own) or supergateway (npm)"
    )

    @field_validator("command")
    @classmethod
    def _command(cls, v: list[str]) -> list[str]:
        if not v[0].strip() or any("\0" in a for a in v):
            raise ValueError("the first item is the program to run")
        return v


class Server(Section):
    """One MCP server behind the gateway, reached by clients at /<name>/mcp: one upstream, or identity-scoped
    backends (the first whose subjects match the caller is used; none matching is a 403)."""

    name: str = Field(description="lowercase name; clients use /<name>/mcp")
    upstream: str | None = Field(default=None, description="host:port of the MCP server")
    backends: list[Backend] | None = None
    stdio: Stdio | None = Field(
        default=None, description="a stdio server `up` runs behind a bridge on 127.0.0.1:<port> (sets upstream)"
    )
    path: str = Field(default="/mcp", description="the server's MCP path (the public prefix is rewritten to it)")
    tls: bool = Field(default=False, description="TLS to the upstream, its certificate verified (CA bundle, SAN, SNI)")
    tls_ca_file: Path | None = Field(
        default=None, description="CA bundle for the upstream's certificate (absolute path); default: the system's"
    )
    tls_server_name: str | None = Field(
        default=None, description="the name the certificate must carry (and SNI); default: the upstream's host"
    )
    tls_insecure_skip_verify: bool = Field(
        default=False,
        description="skip verifying the upstream's certificate: anyone on the path can impersonate the server. "
        "Logged loudly",
    )
    upstream_auth: UpstreamAuth | None = Field(
        default=None,
        description="how the gateway authenticates to the server for the caller (token_exchange, id_jag, static, "
        "assertion; extproc/upstream/config.py); none: it does not, and the caller's token never goes upstream",
    )

    guardrail: Guardrail | None = Field(
        default=None,
        description="an outside service asked allow/deny/modify for each call the policy allowed "
        "(extproc/tools/guardrail.py); fail closed by default",
    )

    _ca = field_validator("tls_ca_file")(absolute)

    host: str = Field(
        default="upstream",
        description="the Host the server is sent: 'upstream' (its own host:port, so a server with DNS-rebinding "
        "protection accepts it), 'client' (as the client sent it) or a literal host[:port]",
    )

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if v not in ("upstream", "client") and not _AUTHORITY.match(v):
            raise ValueError("must be 'upstream', 'client' or a host[:port]")
        return v

    @property
    def upstream_authority(self) -> str | None:
        """The Host header the server gets, or None to keep the client's."""
        if self.host == "client" or (self.host == "upstream" and self.upstream is None):
            return None  # backends are reached by address through one per-request cluster
        if self.host != "upstream":
            return self.host
        assert self.upstream is not None
        host, port = split_hostport(self.upstream)
        host = f"[{host}]" if ":" in host else host
        return host if port == (443 if self.tls else 80) else f"{host}:{port}"

    @model_validator(mode="before")
    @classmethod
    def _stdio_upstream(cls, data: object) -> object:
        """A stdio server's upstream is its bridge on loopback."""
        if isinstance(data, dict) and isinstance(data.get("stdio"), dict) and "upstream" not in data:
            port = data["stdio"].get("port")
            if isinstance(port, int) and not isinstance(port, bool):
                return {**data, "upstream": f"127.0.0.1:{port}"}
        return data

    @model_validator(mode="after")
    def _one_target(self) -> Server:
        if self.stdio is not None and (self.backends is not None or self.upstream != f"127.0.0.1:{self.stdio.port}"):
            raise ValueError("stdio: the server's upstream is its bridge (127.0.0.1:<stdio.port>); drop upstream")
        if (self.upstream is None) == (self.backends is None):
            raise ValueError("give exactly one of upstream or backends")
        if self.backends is not None:
            if not self.backends:
                raise ValueError("backends: list at least one backend")
            if self.tls:
                raise ValueError("tls: not supported with backends (they are reached by address, per request)")
            names = [b.name for b in self.backends]
            if dup := next((n for n in names if names.count(n) > 1), None):
                raise ValueError(f"backends: name {dup!r} is used twice")
        return self

    @model_validator(mode="after")
    def _tls_options(self) -> Server:
        if not self.tls and (self.tls_ca_file or self.tls_server_name or self.tls_insecure_skip_verify):
            raise ValueError("tls_ca_file, tls_server_name, tls_insecure_skip_verify need tls: true")
        if self.tls_insecure_skip_verify and (self.tls_ca_file or self.tls_server_name):
            raise ValueError("tls_insecure_skip_verify: true verifies nothing; drop tls_ca_file/tls_server_name")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be lowercase letters, digits and '-', at most 63 characters (it becomes a path)")
        return v

    @field_validator("upstream")
    @classmethod
    def _upstream(cls, v: str | None) -> str | None:
        if v is not None:
            split_hostport(v)
        return v

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v

    @property
    def prefix(self) -> str:
        """The public path clients use."""
        return f"/{self.name}/mcp"


class Limits(Section):
    """Request size and concurrency limits, enforced by Envoy and the processor."""

    max_request_body_bytes: Annotated[
        int, Field(ge=1024, le=64 << 20, description="larger request bodies get 413 from Envoy, never forwarded")
    ] = 1 << 20
    max_concurrent_streams: Annotated[
        int,
        Field(
            ge=16,
            le=1_000_000,
            description="open requests per cluster (Envoy circuit breakers): an SSE stream holds one for its whole "
            "life, so this is the number of MCP streams open at once per server (and toward the processor) before "
            "Envoy answers 503",
        ),
    ] = 10_000
    shed_lag_ms: Annotated[
        int,
        Field(
            ge=0,
            le=60_000,
            description="a worker whose event loop runs this far behind refuses new exchanges (503, Retry-After) "
            "instead of letting messages queue into Envoy's ext_proc timeout (504 mid-exchange); 0 turns shedding off",
        ),
    ] = 1000


class Edge(Section):
    """Envoy's edge-proxy settings; envoy/envoy.example.yaml explains each where it is rendered."""

    use_remote_address: bool = Field(
        default=True, description="the client address is the TCP peer, not a header the client wrote"
    )
    xff_num_trusted_hops: Annotated[
        int, Field(ge=0, le=10, description="proxies in front whose X-Forwarded-For entries are trusted")
    ] = 0
    max_downstream_connections: Annotated[int, Field(ge=1, description="client connections Envoy accepts at once")] = (
        10_000
    )
    max_heap_bytes: Annotated[int, Field(ge=64 << 20, description="Envoy's heap budget (overload manager)")] = 1 << 30
    stream_idle_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    request_headers_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    http2_max_concurrent_streams: Annotated[int, Field(ge=1, le=2_147_483_647)] = 100
    http2_initial_stream_window_bytes: Annotated[int, Field(ge=65_535, le=2_147_483_647)] = 65_536
    http2_initial_connection_window_bytes: Annotated[int, Field(ge=65_535, le=2_147_483_647)] = 1 << 20
    drain_time_s: Annotated[int, Field(ge=0, le=3600, description="listeners drain this long on shutdown")] = 5
    compress_responses: bool = Field(
        default=True, description="gzip for clients that accept it, applied after the processor"
    )
    upstream_idle_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="Envoy closes an idle connection to an MCP server after this, before the server's own "
            "keep-alive timeout (5 s in uvicorn and Node) can close it under a request Envoy is sending",
        ),
    ] = 4.0


class Admin(Section):
    """Envoy's admin interface."""

    port: Port = Field(default=9901, description="Envoy admin, always on 127.0.0.1")
    stats_port: Port | None = Field(
        default=None, description="a listener serving only /stats/prometheus (for Prometheus); off when unset"
    )
