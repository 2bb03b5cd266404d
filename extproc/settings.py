"""Typed gateway config (gateway.yaml). Validated on load; errors name the file and the key.

Each section's model lives beside its feature (``envoy/config.py``, ``recording/config.py``, ``authn/config.py``,
``policy/config.py``, ``kube/config.py``, ``audit/config.py``); this module assembles them into ``Settings``, loads
and validates a file, and reports every problem as ``file:line: key.path: message``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from extproc.audit.config import Audit
from extproc.authn.config import AuthConfig
from extproc.controls.budgets_config import Budgets
from extproc.controls.config import Approvals
from extproc.envoy.config import Admin, Edge, Limits, Listen, Processor, Server
from extproc.errors import ConfigError
from extproc.export.config import Export
from extproc.kube.config import Discovery, KubernetesAuthz
from extproc.policy.config import Grants, Policy
from extproc.recording.config import Recording
from extproc.reserved import RESERVED_SERVERS
from extproc.sections import Section
from extproc.telemetry.config import Telemetry
from extproc.yamlfile import Lines, did_you_mean, line_of, parse_yaml


class Settings(Section):
    """gateway.yaml: the MCP servers behind the gateway and how they are reached, authenticated, authorized and
    recorded."""

    listen: Listen = Listen()
    processor: Processor = Processor()
    admin: Admin = Admin()
    servers: list[Server]
    recording: Recording = Recording()
    limits: Limits = Limits()
    edge: Edge = Edge()
    auth: AuthConfig | None = None
    policy: Policy | None = None
    discovery: Discovery | None = Field(default=None, description="servers found at run time (Kubernetes Services)")
    kubernetes: KubernetesAuthz | None = Field(
        default=None, description="SubjectAccessReviews for policy rules with `kubernetes:`"
    )
    grants: Grants | None = None
    budgets: Budgets | None = Field(default=None, description="where policy limits are counted (default: locally)")
    approvals: Approvals | None = Field(default=None, description="approvals of one exact call (effect: approve)")
    allow_anonymous: bool = Field(
        default=False,
        description="without `auth`, the gateway refuses to start unless this says, explicitly, that anonymous "
        "access is intended (local experiments only): no exchange may reach an MCP server without a verified "
        "identity by accident",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one object per line, for every process the gateway starts"
    )
    audit: Audit | None = None
    export: Export | None = Field(
        default=None, description="SIEM export: OCSF events of every exchange and audit access (extproc/export/)"
    )
    telemetry: Telemetry | None = Field(
        default=None, description="OpenTelemetry traces of exchanges (extproc/telemetry/); off without an endpoint"
    )

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
        if self.approvals is not None and (self.recording.signing_key is None or self.policy is None):
            raise ValueError("approvals: need recording.signing_key (approvals are signed with it) and a policy")
        return self

    def server(self, name: str) -> Server | None:
        return next((s for s in self.servers if s.name == name), None)

    def resolved(self, base: Path) -> Settings:
        """Every section's relative paths resolved against ``base`` (the config file's folder)."""
        update: dict[str, Any] = {"recording": self.recording.resolved(base)}
        for name in ("policy", "grants", "audit", "export", "approvals"):
            section = getattr(self, name)
            if section is not None:
                update[name] = section.resolved(base)
        return self.model_copy(update=update)


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
    return parse(doc, source=str(path), lines=lines).resolved(path.parent)


def parse(doc: dict[str, Any], source: str = "<config>", lines: Lines | None = None) -> Settings:
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


def json_schema() -> dict[str, Any]:
    """gateway.yaml's JSON Schema (``mcp-extproc config schema``), from the same models that validate it."""
    schema = Settings.model_json_schema()
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema, "title": "gateway.yaml"}
