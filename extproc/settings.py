"""Typed gateway config (gateway.yaml). Validated on load; errors name the file and the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from extproc.authn.config import AuthConfig
from extproc.errors import ConfigError
from extproc.kube.config import Discovery, KubernetesAuthz
from extproc.policy.model import Subjects

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_HOSTPORT = re.compile(r"^(?P<host>\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):(?P<port>\d{1,5})$")

Port = Annotated[int, Field(ge=1, le=65535)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def split_hostport(value: str) -> tuple[str, int]:
    """'host:port' -> (host, port); raises ValueError with a plain message."""
    m = _HOSTPORT.match(value)
    if not m or not 0 < int(m["port"]) < 65536:
        raise ValueError(f"expected host:port, got {value!r}")
    return m["host"].strip("[]"), int(m["port"])


class Listen(_Model):
    address: str = "127.0.0.1"
    port: Port = 8080


class Processor(_Model):
    """Where Envoy reaches the processor: 'host:port' or 'unix:/path/to.sock'."""

    address: str = "127.0.0.1:50051"
    message_timeout_ms: Annotated[int, Field(ge=10, le=60_000)] = 5000
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    metrics_port: Port | None = None  # Prometheus /metrics of worker i on metrics_port + i; off when unset
    metrics_address: str = "127.0.0.1"

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
    tls: bool = False

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


class Recording(_Model):
    store: Literal["file", "s3"] = "file"
    directory: Path = Path("recordings")
    s3: S3 | None = None
    # Write-ahead spool: every event is on local disk before anything else; default <directory>/.spool.
    spool_directory: Path | None = None
    spool_max_bytes: Annotated[int, Field(ge=16 << 10)] = 1 << 30
    segment_max_bytes: Annotated[int, Field(ge=1024, le=256 << 20)] = 1 << 20
    segment_max_age_ms: Annotated[int, Field(ge=10, le=3_600_000)] = 2000
    compression: Literal["none", "gzip", "zstd"] = "none"  # of stored segments (s3 store)
    signing_key: Path | None = None  # Ed25519 private key (PEM) that signs segment manifests
    session_idle_timeout_s: Annotated[float, Field(gt=0)] = 1800.0
    completer_interval_s: Annotated[float, Field(gt=0)] = 30.0
    flush_interval_ms: Annotated[int, Field(ge=1, le=60_000)] = 200
    queue_size: Annotated[int, Field(ge=16)] = 10_000
    max_event_body_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    required: bool = True

    @model_validator(mode="after")
    def _store_settings(self) -> Recording:
        if self.store == "s3" and self.s3 is None:
            raise ValueError("store: s3 needs an s3: section (bucket, prefix, …)")
        if self.store == "file" and self.s3 is not None:
            raise ValueError("s3: given but store is 'file'")
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


class Policy(_Model):
    """Where the YAML policies live; the processor watches the directory and reloads valid edits."""

    directory: Path = Path("policies")
    reload_interval_ms: Annotated[int, Field(ge=100, le=600_000)] = 1000


class Grants(_Model):
    """Signed just-in-time grants (``mcp-extproc grant create``), verified with recording.signing_key."""

    directory: Path = Path("grants")


class Admin(_Model):
    port: Port = 9901


class Settings(_Model):
    listen: Listen = Listen()
    processor: Processor = Processor()
    admin: Admin = Admin()
    servers: list[Server]
    recording: Recording = Recording()
    limits: Limits = Limits()
    auth: AuthConfig | None = None
    policy: Policy | None = None
    discovery: Discovery | None = None  # servers found at run time (Kubernetes Services)
    kubernetes: KubernetesAuthz | None = None  # SubjectAccessReviews for policy rules with `kubernetes:`
    grants: Grants | None = None
    # Without `auth`, the gateway refuses to start unless this says, explicitly, that anonymous access is intended
    # (local experiments only): no exchange may reach an MCP server without a verified identity by accident.
    allow_anonymous: bool = False

    # A field validator (not a model validator) so the error is reported under the key ``servers``.
    @field_validator("servers")
    @classmethod
    def _unique(cls, servers: list[Server]) -> list[Server]:
        seen: set[str] = set()
        for s in servers:
            if s.name in seen:
                raise ValueError(f"server name {s.name!r} is defined twice")
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
    """Read and validate gateway.yaml; relative directories resolve against the file's folder."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    try:
        settings = parse(doc, source=str(path))
    except ConfigError as e:
        raise ConfigError(with_lines(str(e), str(path))) from None
    settings = settings.model_copy(update={"recording": settings.recording.resolved(path.parent)})
    if settings.grants is not None and not settings.grants.directory.is_absolute():
        grants = Grants(directory=(path.parent / settings.grants.directory).resolve())
        settings = settings.model_copy(update={"grants": grants})
    pol = settings.policy
    if pol is not None and not pol.directory.is_absolute():
        pol = pol.model_copy(update={"directory": (path.parent / pol.directory).resolve()})
        settings = settings.model_copy(update={"policy": pol})
    return settings


def parse(doc: dict, source: str = "<config>") -> Settings:
    """Validate a config mapping; every problem is reported as ``source: key.path: message``."""
    try:
        return Settings.model_validate(doc)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{source}: {key}: {msg}" if key else f"{source}: {msg}")  # model checks name their key
        raise ConfigError("\n".join(lines)) from None


def with_lines(errors: str, source: str) -> str:
    """``source: key: msg`` lines of ``parse`` as ``source:line: key: msg`` (line of the deepest known key)."""
    from extproc.policy.loader import parse_yaml  # the YAML line map the policy loader keeps

    try:
        _, lines = parse_yaml(Path(source).read_bytes(), source)
    except (ConfigError, OSError):
        return errors
    out = []
    for line in errors.splitlines():
        head = f"{source}: "
        if not line.startswith(head):
            out.append(line)
            continue
        rest = line[len(head) :]
        key = tuple(rest.split(": ", 1)[0].split(".")) if ": " in rest else ()
        while key and key not in lines:
            key = key[:-1]
        out.append(f"{source}:{lines.get(key, 1)}: {rest}")
    return "\n".join(out)
