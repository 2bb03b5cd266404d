"""Typed gateway config (gateway.yaml). Validated on load; errors name the file and the key."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from extproc.authn.config import AuthConfig, origin_of
from extproc.errors import ConfigError
from extproc.kube.config import Discovery, KubernetesAuthz
from extproc.policy.compiled import RESERVED_SERVERS
from extproc.policy.model import Subjects
from extproc.yamlfile import Lines, did_you_mean, line_of, parse_yaml

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOSTPORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+/?$")
_AUTHORITY = re.compile(r"^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?$")

Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def split_hostport(value: str) -> tuple[str, int]:
    """'host:port' -> (host, port); raises ValueError with a plain message."""
    m = _HOSTPORT.match(value)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return m["host"].strip("[]"), int(m["port"])


def _absolute(v: Path | None) -> Path | None:
    if v is not None and not v.is_absolute():
        raise ValueError(f"{v}: must be an absolute path (TLS files are read by Envoy, from its working directory)")
    return v


class ListenTls(_Model):
    """TLS on Envoy's listener. The files are re-read when they change (SDS from files), no restart needed."""

    cert_file: Path  # PEM chain, leaf first
    key_file: Path
    client_ca_file: Path | None = None  # PEM bundle; with it clients may present certificates (mTLS)
    require_client_cert: bool = False
    # Watched for changes: a rotation replaces the files there (cert-manager and the kubelet swap a symlink).
    # Default: the folder of cert_file.
    watch_directory: Path | None = None

    _paths = field_validator("cert_file", "key_file", "client_ca_file", "watch_directory")(_absolute)

    @model_validator(mode="after")
    def _client_ca(self) -> ListenTls:
        if self.require_client_cert and self.client_ca_file is None:
            raise ValueError("require_client_cert: needs client_ca_file (the CA bundle client certificates chain to)")
        return self


class Listen(_Model):
    address: str = "127.0.0.1"
    port: Port = 8080
    # Browser Origins allowed to call besides the gateway's own (auth.public_url's, or without auth the listen
    # address's); any other Origin gets 403 in every mode. Requests without an Origin (non-browser) pass.
    allowed_origins: list[str] = []
    tls: ListenTls | None = None

    @field_validator("allowed_origins")
    @classmethod
    def _origins(cls, v: list[str]) -> list[str]:
        for o in v:
            if not _ORIGIN.match(o):
                raise ValueError(f"origin {o!r} must look like scheme://host[:port]")
        return [origin_of(o) for o in v]


class ProcessorTls(_Model):
    """Envoy <-> processor over TCP with mutual TLS (when they are on different hosts; a Unix socket otherwise)."""

    cert_file: Path  # the processor's server certificate
    key_file: Path
    ca_file: Path  # CA bundle both sides check the other's certificate against
    client_cert_file: Path  # Envoy's client certificate
    client_key_file: Path
    server_name: str = ""  # SNI and the SAN Envoy expects in the processor's certificate; default: its host

    _paths = field_validator("cert_file", "key_file", "ca_file", "client_cert_file", "client_key_file")(_absolute)


class Processor(_Model):
    """Where Envoy reaches the processor: 'host:port' or 'unix:/path/to.sock'."""

    address: str = "127.0.0.1:50051"
    message_timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = 5000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    metrics_port: Port | None = None  # Prometheus /metrics of worker i on metrics_port + i; off when unset
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


class Backend(_Model):
    """One upstream of a server, reached only by callers matching ``subjects`` (the policy's subject syntax)."""

    name: str
    upstream: str
    path: str | None = None  # default: the server's path
    subjects: Subjects

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


class Server(_Model):
    """One MCP server behind the gateway, reached by clients at /<name>/mcp: one upstream, or identity-scoped
    backends (the first whose subjects match the caller is used; none matching is a 403)."""

    name: str
    upstream: str | None = None
    backends: list[Backend] | None = None
    path: str = "/mcp"
    tls: bool = False  # TLS to the upstream, its certificate verified (CA bundle, SAN, SNI)
    tls_ca_file: Path | None = None  # CA bundle for the upstream's certificate; default: the system's
    tls_server_name: str | None = None  # the name the certificate must carry (and SNI); default: upstream's host
    # Skip verifying the upstream's certificate: anyone on the path can impersonate the server. Logged loudly.
    tls_insecure_skip_verify: bool = False

    _ca = field_validator("tls_ca_file")(_absolute)

    # The Host the server is sent: "upstream" (its own host:port, so a server with DNS-rebinding protection
    # accepts it), "client" (as the client sent it) or a literal host[:port].
    host: str = "upstream"

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

    @model_validator(mode="after")
    def _one_target(self) -> Server:
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


_CREDENTIAL_KEYS = ("access_key", "secret", "session_token", "password", "credentials", "profile")


class ObjectLock(_Model):
    """S3 Object Lock retention applied to every object (the bucket must have Object Lock enabled)."""

    mode: Literal["GOVERNANCE", "COMPLIANCE"]
    retain_days: Annotated[int, Field(ge=1, le=36_500)]


class S3(_Model):
    """S3 (or S3-compatible) bucket. Credentials come only from boto3's default chain, never from this file."""

    bucket: Annotated[str, Field(min_length=3, max_length=63)]
    prefix: str = "mcp-recordings"
    region: str | None = None
    endpoint_url: str | None = None  # S3-compatible stores (MinIO, Ceph, a test server)
    object_lock: ObjectLock | None = None
    kms_key_id: str | None = None  # SSE-KMS key id or ARN; unset = the bucket's default encryption

    @model_validator(mode="before")
    @classmethod
    def _no_credentials(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in data:
                if any(word in str(key).lower() for word in _CREDENTIAL_KEYS):
                    raise ValueError(
                        f"{key}: credentials are never read from gateway.yaml; use the AWS default chain "
                        "(IRSA, EKS pod identity, instance role, environment)"
                    )
        return data


class Retention(_Model):
    """File store retention: whole sessions deleted by age, then oldest first over a total size; each recorded."""

    max_age_days: Annotated[float, Field(gt=0)] | None = None
    max_total_bytes: Annotated[int, Field(ge=1 << 20)] | None = None
    interval_s: Annotated[float, Field(gt=0)] = 60.0

    @model_validator(mode="after")
    def _some_bound(self) -> Retention:
        if self.max_age_days is None and self.max_total_bytes is None:
            raise ValueError("retention: set max_age_days, max_total_bytes or both")
        return self


class Recording(_Model):
    store: Literal["file", "s3"] = "file"
    directory: Path = Path("recordings")
    s3: S3 | None = None
    # Write-ahead spool: every event is on local disk before anything else; default <directory>/.spool.
    spool_directory: Path | None = None
    spool_max_bytes: Annotated[int, Field(ge=16 << 10)] = 1 << 30
    segment_max_bytes: Annotated[int, Field(ge=1024, le=256 << 20)] = 4 << 20  # bench/README.md "Large SSE"
    segment_max_age_ms: Annotated[int, Field(ge=10, le=3_600_000)] = 2000
    compression: Literal["none", "gzip", "zstd"] = "none"  # of stored segments (s3 store)
    signing_key: Path | None = None  # Ed25519 private key (PEM) that signs segment manifests
    session_idle_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    # Stateless (2026-07-28) traffic has no session id: one client's requests are one recorded run until it stays
    # silent this long (a W3C traceparent overrides the gap). See extproc/mcp/protocol.py RunTracker.
    run_idle_gap_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    completer_interval_s: Annotated[float, Field(gt=0)] = 30.0
    digest_interval_s: Annotated[float, Field(gt=0)] = 300.0  # each writer's signed digest of what it stored
    flush_interval_ms: Annotated[int, Field(ge=1, le=60_000)] = 200
    # A stream's segment is sealed (signed, shipped) on a tick every this interval once an exchange of it ended (all
    # due streams together); default 5 x flush_interval_ms. Every event is in the spool before that: a longer
    # interval delays only what the store shows, never what survives a crash.
    seal_interval_ms: Annotated[int, Field(ge=1, le=600_000)] | None = None
    # Seals (by exchange end or segment age) per second across all streams of a processor: with many busy sessions
    # each one's segments are sealed less often instead of the recorder's cost growing with the session count.
    # Size cuts (segment_max_bytes) and stream ends are never held back.
    max_seals_per_second: Annotated[float, Field(gt=0)] = 100.0
    queue_size: Annotated[int, Field(ge=16)] = 10_000
    # A body (request, response, SSE event, chunk) over this is kept as size + SHA-256 only, at every level.
    max_event_body_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    # Per processor worker: bytes of unfinished response bodies (SSE events, JSON documents) held for parsing, over
    # all its exchanges. Past it, a body's further bytes still stream on but are recorded as size + SHA-256 only.
    max_held_body_bytes: Annotated[int, Field(ge=64 << 10)] = 32 << 20
    required: bool = True
    # Per server: full (default), metadata (no payloads: who, method, tool, decision, status, sizes, hashes), off.
    servers: dict[str, Literal["full", "metadata", "off"]] = {}
    off_acknowledged: str = ""  # why some servers are not recorded at all: required for `off`, logged at start
    retention: Retention | None = None  # file store only (S3: lifecycle rules on the bucket)

    @model_validator(mode="after")
    def _store_settings(self) -> Recording:
        if self.store == "s3" and self.s3 is None:
            raise ValueError("store: s3 needs an s3: section (bucket, prefix, …)")
        if self.store == "file" and self.s3 is not None:
            raise ValueError("s3: given but store is 'file'")
        if "off" in self.servers.values() and not self.off_acknowledged.strip():
            raise ValueError(
                "servers: 'off' records nothing for a server; say why in recording.off_acknowledged (it is logged)"
            )
        if self.retention is not None and self.store != "file":
            raise ValueError("retention: file store only; for S3 use lifecycle rules on the bucket")
        return self

    @property
    def spool(self) -> Path:
        return self.spool_directory or self.directory / ".spool"

    def resolved(self, base: Path) -> Recording:
        """Relative paths resolve against the config file's folder."""
        update = {}
        for name in ("directory", "spool_directory", "signing_key"):
            value = getattr(self, name)
            if value is not None and not value.is_absolute():
                update[name] = (base / value).resolve()
        return self.model_copy(update=update)


class Limits(_Model):
    max_request_body_bytes: Annotated[int, Field(ge=1024, le=64 << 20)] = 1 << 20
    # Open requests per cluster (Envoy circuit breakers): an SSE stream holds one for its whole life, so this is
    # the number of MCP streams open at once per server (and toward the processor) before Envoy answers 503.
    max_concurrent_streams: Annotated[int, Field(ge=16, le=1_000_000)] = 10_000
    # A worker whose event loop runs this far behind refuses new exchanges (503, Retry-After) instead of letting
    # messages queue into Envoy's ext_proc timeout (504 mid-exchange); 0 turns shedding off. extproc/overload.py
    shed_lag_ms: Annotated[int, Field(ge=0, le=60_000)] = 1000


class Edge(_Model):
    """Envoy's edge-proxy settings; envoy/envoy.example.yaml explains each where it is rendered."""

    use_remote_address: bool = True  # the client address is the TCP peer, not a header the client wrote
    xff_num_trusted_hops: Annotated[int, Field(ge=0, le=10)] = 0  # proxies in front whose X-Forwarded-For to trust
    max_downstream_connections: Annotated[int, Field(ge=1)] = 10_000
    max_heap_bytes: Annotated[int, Field(ge=64 << 20)] = 1 << 30
    stream_idle_timeout_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0
    request_headers_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    http2_max_concurrent_streams: Annotated[int, Field(ge=1, le=2_147_483_647)] = 100
    http2_initial_stream_window_bytes: Annotated[int, Field(ge=65_535, le=2_147_483_647)] = 65_536
    http2_initial_connection_window_bytes: Annotated[int, Field(ge=65_535, le=2_147_483_647)] = 1 << 20
    drain_time_s: Annotated[int, Field(ge=0, le=3600)] = 5  # listeners drain this long on shutdown
    compress_responses: bool = True  # gzip for clients that accept it, applied after the processor
    # Envoy closes an idle connection to an MCP server after this, before the server's own keep-alive timeout
    # (5 s in uvicorn and Node) can close it under a request Envoy is sending.
    upstream_idle_timeout_s: Annotated[float, Field(gt=0, le=3600)] = 4.0


class Policy(_Model):
    """Where the YAML policies live; the processor watches the directory and reloads valid edits."""

    directory: Path = Path("policies")
    reload_interval_ms: Annotated[int, Field(ge=100, le=600_000)] = 1000


class Grants(_Model):
    """Signed just-in-time grants (``mcp-extproc grant create``), verified with recording.signing_key."""

    directory: Path = Path("grants")


class Admin(_Model):
    port: Port = 9901  # Envoy admin, always on 127.0.0.1
    stats_port: Port | None = None  # a listener serving only /stats/prometheus (for Prometheus); off when unset


class Audit(_Model):
    """The audit service: recordings served to the people the policy's ``viewers`` rules allow."""

    prefix: str = "/audit/"  # its public path behind the gateway's listener
    address: str = "127.0.0.1"
    port: Port = 8090
    # OIDC client of the web viewer (Authorization Code + PKCE). None: web login off, the viewer says how to turn it on
    # (no default id: an IdP only knows the clients registered with it; the dev issuer accepts any name)
    client_id: str | None = None
    client_secret_file: Path | None = None  # a confidential client's secret, read from this file
    login_issuer: str | None = None  # which configured issuer the web viewer logs in with; default: the first
    index: Path | None = None  # SQLite session index; default <recording.directory>/.audit-index.sqlite
    index_interval_ms: Annotated[int, Field(ge=50, le=600_000)] = 2000

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        if not re.fullmatch(r"/([A-Za-z0-9._-]+/)+", v) or any(p in (".", "..") for p in v.split("/")):
            raise ValueError("must look like /audit/ (slashes at both ends, letters, digits, '.', '_', '-')")
        return v


class Settings(_Model):
    listen: Listen = Listen()
    processor: Processor = Processor()
    admin: Admin = Admin()
    servers: list[Server]
    recording: Recording = Recording()
    limits: Limits = Limits()
    edge: Edge = Edge()
    auth: AuthConfig | None = None
    policy: Policy | None = None
    discovery: Discovery | None = None  # servers found at run time (Kubernetes Services)
    kubernetes: KubernetesAuthz | None = None  # SubjectAccessReviews for policy rules with `kubernetes:`
    grants: Grants | None = None
    # Without `auth`, the gateway refuses to start unless this says, explicitly, that anonymous access is intended
    # (local experiments only): no exchange may reach an MCP server without a verified identity by accident.
    allow_anonymous: bool = False
    log_format: Literal["text", "json"] = "text"  # json: one object per line, for every process the gateway starts
    audit: Audit | None = None

    # A field validator (not a model validator) so the error is reported under the key ``servers``.
    @field_validator("servers")
    @classmethod
    def _unique(cls, servers: list[Server]) -> list[Server]:
        seen: set[str] = set()
        for s in servers:
            if s.name in seen:
                raise ValueError(f"server name {s.name!r} is defined twice")
            if s.name in RESERVED_SERVERS:
                raise ValueError(f"server name {s.name!r} is reserved (it names the audit trail in viewer rules)")
            seen.add(s.name)
        return servers

    @model_validator(mode="after")
    def _some_server(self) -> Settings:
        if not self.servers and (self.discovery is None or self.discovery.kubernetes is None):
            raise ValueError("servers: at least one MCP server is required (or discovery.kubernetes to find them)")
        return self

    @model_validator(mode="after")
    def _auth_or_anonymous(self) -> Settings:
        if self.auth is None and not self.allow_anonymous:
            raise ValueError("auth: required (or set allow_anonymous: true to run without authentication, for tests)")
        if self.auth is not None and self.allow_anonymous:
            raise ValueError("allow_anonymous: cannot be true when auth is configured")
        if self.auth is not None and self.processor.workers > 1 and self.auth.session_secret_file is None:
            # Each worker would make its own random binding key: a session opened on one would be refused on another.
            raise ValueError("auth.session_secret_file: required when processor.workers > 1 (one key for all workers)")
        if self.auth is None and self.policy is not None:
            raise ValueError("policy: needs auth (rules match identities; anonymous callers would pass unchecked)")
        if self.audit is not None and (self.auth is None or self.policy is None):
            raise ValueError("audit: needs auth and policy (recordings are served only to viewers the policy names)")
        unknown = sorted(set(self.recording.servers) - {s.name for s in self.servers})
        if unknown:
            raise ValueError(f"recording.servers: {', '.join(unknown)} not in servers")
        if self.auth is not None and self.policy is None:
            raise ValueError("policy: required when auth is configured (deny by default needs rules to allow anything)")
        return self

    @model_validator(mode="after")
    def _grants_need_key(self) -> Settings:
        if self.grants is not None and (self.recording.signing_key is None or self.policy is None):
            raise ValueError("grants: need recording.signing_key (grants are signed with it) and a policy")
        return self

    def server(self, name: str) -> Server | None:
        return next((s for s in self.servers if s.name == name), None)


def load(path: str | Path) -> Settings:
    """Read and validate gateway.yaml; relative directories resolve against the file's folder.

    Problems are reported as ``file:line: key.path: message``, all at once, unknown keys with a "did you mean".
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    if not data.strip():
        raise ConfigError(f"{path}:1: empty file; expected a mapping at the top level (servers: ...)")
    doc, lines = parse_yaml(data, str(path))
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}:1: expected a mapping at the top level (servers: ...)")
    settings = parse(doc, source=str(path), lines=lines)
    settings = settings.model_copy(update={"recording": settings.recording.resolved(path.parent)})
    if settings.grants is not None and not settings.grants.directory.is_absolute():
        grants = Grants(directory=(path.parent / settings.grants.directory).resolve())
        settings = settings.model_copy(update={"grants": grants})
    pol = settings.policy
    if pol is not None and not pol.directory.is_absolute():
        pol = pol.model_copy(update={"directory": (path.parent / pol.directory).resolve()})
        settings = settings.model_copy(update={"policy": pol})
    audit = settings.audit
    if audit is not None:
        update = {}
        for name in ("client_secret_file", "index"):
            value = getattr(audit, name)
            if value is not None and not value.is_absolute():
                update[name] = (path.parent / value).resolve()
        settings = settings.model_copy(update={"audit": audit.model_copy(update=update)})
    return settings


def parse(doc: dict, source: str = "<config>", lines: Lines | None = None) -> Settings:
    """Validate a config mapping; every problem is reported as ``source[:line]: key.path: message``."""
    try:
        return Settings.model_validate(doc)
    except ValidationError as e:
        out = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = f"unknown key{did_you_mean(str(err['loc'][-1]), _known_keys())}"
            where = f"{source}:{line_of(lines, err['loc'])}" if lines is not None else source
            out.append(f"{where}: {key}: {msg}" if key else f"{where}: {msg}")  # model checks name their key
        raise ConfigError("\n".join(out)) from None


@functools.cache
def _known_keys() -> frozenset[str]:
    """Every key gateway.yaml knows (at any level), to suggest a spelling for an unknown one."""
    keys: set[str] = set()
    todo: list[Any] = [Settings]
    seen: set[Any] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, f in model.model_fields.items():
            keys.add(f.alias or name)
            stack = [f.annotation]
            while stack:
                t = stack.pop()
                if isinstance(t, type) and issubclass(t, BaseModel):
                    todo.append(t)
                stack.extend(get_args(t))
    return frozenset(keys)
