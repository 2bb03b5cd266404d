"""The policy file format (apiVersion mcp-extproc/v1) as strict pydantic models; also the JSON Schema source.

These models only validate one file. Cross-file checks (unique names, servers known to gateway.yaml) and the
lookup structures used per request live in ``compiler.py`` and ``compiled.py``; per-request code never touches
these models. The constrained field types are in ``fields.py``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from extproc.mcp.methods import KNOWN_METHODS
from extproc.policy.fields import (
    MethodGlob,
    NameGlob,
    Per,
    Pointer,
    Regex,
    RuleName,
    Scalars,
    ServerName,
    Ttl,
    UriGlob,
    check_pointer,
    ttl_seconds,
)
from extproc.policy.globs import compile_globs

API_VERSION = "mcp-extproc/v1"

# A method glob must match one of the MCP methods of some revision (extproc/mcp/methods.py), so a typo in a deny
# rule is a load error instead of a rule that silently never fires.
TOOL_METHODS = ("tools/call",)
RESOURCE_METHODS = ("resources/read", "resources/subscribe", "resources/unsubscribe")
PROMPT_METHODS = ("prompts/get",)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class ClaimMatch(_Model):
    """A condition on one token claim; a list-valued claim matches when any element does."""

    claim: str = Field(min_length=1, description="Top-level claim name, or a JSON pointer (/realm_access/roles).")
    values: Scalars = Field(None, description="The claim equals one of these (type-exact: 1 is not '1').")
    pattern: Regex | None = Field(None, description="The claim is a string fully matching this regex.")

    @model_validator(mode="after")
    def _one(self) -> ClaimMatch:
        if (self.values is None) == (self.pattern is None):
            raise ValueError("give exactly one of values or pattern")
        if self.claim.startswith("/"):
            check_pointer(self.claim)
        return self


class Subjects(_Model):
    """Who a rule is about: (one of users OR one of groups) AND every claim condition."""

    users: list[str] = Field([], description="Principal usernames; '*' is any caller.")
    groups: list[str] = Field([], description="The caller is in at least one of these groups.")
    claims: list[ClaimMatch] = Field([], description="All must hold (AND), in addition to users/groups.")

    @model_validator(mode="after")
    def _some(self) -> Subjects:
        if not (self.users or self.groups or self.claims):
            raise ValueError("name at least one of users, groups or claims (use users: ['*'] for everyone)")
        return self


class Targets(_Model):
    """What a rule is about. Omitted methods default to the methods the listed tools/resources/prompts use."""

    servers: list[ServerName] = Field(min_length=1, description="Server names from gateway.yaml, or '*'.")
    methods: list[MethodGlob] | None = Field(None, min_length=1, description="JSON-RPC method names or globs.")
    tools: list[NameGlob] | None = Field(None, min_length=1, description="Tool names/globs (tools/call).")
    resources: list[UriGlob] | None = Field(
        None, min_length=1, description="Resource URI globs (resources/read, subscribe); '*' stops at '/'."
    )
    prompts: list[NameGlob] | None = Field(None, min_length=1, description="Prompt names/globs (prompts/get).")

    def effective_methods(self) -> list[str]:
        """The methods this target covers, with the default applied."""
        if self.methods is not None:
            return self.methods
        derived = [
            *(TOOL_METHODS if self.tools else ()),
            *(RESOURCE_METHODS if self.resources else ()),
            *(PROMPT_METHODS if self.prompts else ()),
        ]
        return derived or ["*"]

    @model_validator(mode="after")
    def _objects_reachable(self) -> Targets:
        covers = compile_globs(self.effective_methods())
        for key, methods in (("tools", TOOL_METHODS), ("resources", RESOURCE_METHODS), ("prompts", PROMPT_METHODS)):
            if getattr(self, key) and not any(covers(m) for m in methods):
                raise ValueError(f"{key} only apply to {', '.join(methods)}, which methods does not include")
        return self


class ArgConstraint(_Model):
    """Conditions on one tools/call argument; all given kinds must hold."""

    values: Scalars = Field(None, description="The argument equals one of these (type-exact).")
    pattern: Regex | None = Field(None, description="The argument is a string fully matching this regex.")
    min: float | None = Field(None, description="The argument is a number >= min.")
    max: float | None = Field(None, description="The argument is a number <= max.")
    max_length: int | None = Field(None, ge=0, description="String length (characters) or array length (items).")
    optional: bool = Field(False, description="An absent argument is never the reason a call is refused.")

    @model_validator(mode="after")
    def _some(self) -> ArgConstraint:
        if self.values is None and self.pattern is None and self.min is None and self.max is None:
            if self.max_length is None:
                raise ValueError("give at least one of values, pattern, min, max, max_length")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self


class KubernetesCheck(_Model):
    """The rule applies only if the Kubernetes API server allows the caller this (a SubjectAccessReview)."""

    verb: str = Field(min_length=1, description="e.g. use")
    group: str = Field("", description="API group, e.g. mcp-extproc.io")
    resource: str = Field(min_length=1, description="e.g. mcpservers")
    name: str | None = Field(None, description="Resource name, e.g. the server name")
    namespace: str | None = Field(None, description="Namespace of a namespaced resource (a RoleBinding's)")
    subresource: str | None = None


class Limit(_Model):
    """A budget: at most ``calls`` calls in any window of ``per`` (sliding), counted per caller (issuer+subject)
    and, with ``by``, per tool and/or server too."""

    calls: int = Field(ge=1, le=1_000_000, description="Calls allowed in any window of `per`.")
    per: Per = Field(description="The window: 30s, 1m, 1h, 1d.")
    by: list[Literal["tool", "server"]] = Field(
        [], description="Count separately per tool and/or server (always per caller); default: all the rule allows."
    )


class Rule(_Model):
    """One allow, deny or approve rule (approve: the call runs once a person in ``approvers`` approves it)."""

    name: RuleName
    description: str | None = None
    effect: Literal["allow", "deny", "approve"]
    subjects: Subjects
    targets: Targets
    arguments: dict[str, ArgConstraint] | None = Field(
        None, min_length=1, description="tools/call only: the rule applies only when every condition holds."
    )
    kubernetes: KubernetesCheck | None = Field(
        None, description="allow rules only: also require this Kubernetes authorization (SubjectAccessReview)."
    )
    limits: list[Limit] | None = Field(
        None, min_length=1, description="allow rules only: budgets for the calls this rule allows (HTTP 429 over)."
    )
    on_store_error: Literal["closed", "open"] = Field(
        "closed", description="With limits, when the shared counter store (Redis) fails: closed = 503, open = pass."
    )

    @model_validator(mode="after")
    def _limits_on_allow(self) -> Rule:
        if self.limits is not None and self.effect != "allow":
            raise ValueError("limits apply to allow rules only (a denied call spends no budget)")
        if self.limits is None and "on_store_error" in self.model_fields_set:
            raise ValueError("on_store_error applies only to a rule with limits")
        return self

    approvers: Subjects | None = Field(
        None, description="approve rules only: who may approve a held call (never the caller themself)."
    )
    ttl: Ttl | None = Field(
        None, description="approve rules only: how long a request waits, and an approval stays usable (e.g. 15m)."
    )
    count: int | None = Field(
        None, ge=1, le=100, description="approve rules only: how many identical calls one approval lets pass (1)."
    )

    @model_validator(mode="after")
    def _approval_fields(self) -> Rule:
        given = [k for k in ("approvers", "ttl", "count") if getattr(self, k) is not None]
        if self.effect != "approve" and given:
            raise ValueError(f"{', '.join(given)}: only for effect: approve")
        if self.effect == "approve" and (self.approvers is None or self.ttl is None):
            raise ValueError("effect: approve needs approvers (who may approve) and ttl (e.g. 15m)")
        if self.effect == "approve":
            covers = compile_globs(self.targets.effective_methods())
            if [m for m in KNOWN_METHODS if covers(m)] != ["tools/call"]:
                raise ValueError("effect: approve applies to tools/call only: list tools, or set methods: [tools/call]")
        return self

    def ttl_seconds(self) -> float | None:
        """``ttl`` in seconds (None when not given)."""
        return ttl_seconds(self.ttl) if self.ttl is not None else None

    @model_validator(mode="after")
    def _kubernetes_on_allow(self) -> Rule:
        if self.kubernetes is not None and self.effect != "allow":
            raise ValueError("kubernetes applies to allow rules only (a deny needs no API server's consent)")
        return self

    @model_validator(mode="after")
    def _arguments_need_tools_call(self) -> Rule:
        if self.arguments is not None:
            covers = compile_globs(self.targets.effective_methods())
            if [m for m in KNOWN_METHODS if covers(m)] != ["tools/call"]:
                raise ValueError("arguments apply only to tools/call: list tools, or set methods: [tools/call]")
        return self


class Redaction(_Model):
    """Replace what matches with "[REDACTED:<name>]" before a recording is stored."""

    name: RuleName
    path: Pointer | None = Field(None, description="RFC 6901 pointer into each message; '*' segment = any.")
    pattern: Regex | None = Field(None, description="Regex over every string; a (?P<value>...) group narrows it.")
    key: Regex | None = Field(None, description="Regex fully matching object keys whose values are redacted.")

    @model_validator(mode="after")
    def _one(self) -> Redaction:
        if sum(x is not None for x in (self.path, self.pattern, self.key)) != 1:
            raise ValueError("give exactly one of path, pattern or key")
        return self


class RecordingRules(_Model):
    """Redactions and the capture level for the recordings of some servers (and optionally some of their tools)."""

    servers: list[ServerName] = Field(min_length=1)
    defaults: bool = Field(True, description="Apply the built-in redactions (tokens, keys, passwords).")
    redact: list[Redaction] = []
    capture: Literal["full", "redacted", "shape", "metadata"] | None = Field(
        None,
        description="How much of the payloads is kept: full (no redaction), redacted (the default), shape (names, "
        "types, sizes and salted hashes; no values), metadata (who, when, what, decision, status, sizes). Where "
        "several entries apply, the strictest wins.",
    )
    tools: list[NameGlob] | None = Field(
        None, min_length=1, description="Only tools/call of these tools: the entry may then set capture only."
    )

    @model_validator(mode="after")
    def _tools_only_capture(self) -> RecordingRules:
        if self.tools is not None and (self.capture is None or self.redact or not self.defaults):
            raise ValueError("tools: a per-tool entry sets capture only (redactions apply to the whole server)")
        return self


class Viewer(_Model):
    """Who may list and replay which recordings."""

    name: RuleName
    description: str | None = None
    subjects: Subjects
    servers: list[ServerName] = Field(min_length=1)
    sessions: Literal["own", "all"] = Field(description="own: only sessions the viewer made; all: everyone's.")


ScreenAction = Literal["alarm", "strip", "hide", "refuse"]


class Screens(_Model):
    """What each built-in screen does with a finding (extproc/tools/screens.py): alarm (pass, recorded), strip
    (remove the characters, recorded), hide (the item leaves the list, calls to it refused), refuse (every call
    to the server refused while the finding is listed)."""

    invisible: ScreenAction = Field(default="strip", description="Tag characters, zero-width and bidi controls.")
    instructions: ScreenAction = Field(default="alarm", description="Instruction markers addressed to the model.")
    cross_server: ScreenAction = Field(default="alarm", description="A description naming another server's tool.")
    results: Literal["strip", "alarm", "ignore"] = Field(
        default="strip",
        description="Invisible characters in what a call returns (tools/call, prompts/get, resources/read): strip "
        "removes them before the client sees the result, recorded with where; alarm records them; ignore: not "
        "screened.",
    )
    result_markers: Literal["alarm", "refuse", "ignore"] = Field(
        default="alarm",
        description="Instruction markers and other servers' tool names in what a call returns (the instructions "
        "and cross_server screens on results): alarm records them; refuse replaces the result with a JSON-RPC "
        "error before the client sees it (a streamed SSE result: its event is held until complete, then replaced); "
        "ignore: not screened.",
    )

    @model_validator(mode="after")
    def _strip_only_characters(self) -> Screens:
        for name in ("instructions", "cross_server"):
            if getattr(self, name) == "strip":
                raise ValueError(f"{name}: strip applies to invisible characters only; use alarm, hide or refuse")
        return self


class Integrity(_Model):
    """Tool-surface integrity for some servers (and optionally some of their tools, prompts, resources): what a
    definition that changed since it was pinned leads to, and what the screens do."""

    servers: list[ServerName] = Field(min_length=1)
    tools: list[NameGlob] | None = Field(
        None, min_length=1, description="Only these item names (tools, prompts, resource URIs); beats server-wide."
    )
    on_change: Literal["alarm", "hide", "block"] = Field(
        "hide",
        description="alarm: pass and record; hide: the item leaves lists and calls to it are refused until "
        "approved; block: every call to the server is refused until approved.",
    )
    screens: Screens = Field(default_factory=Screens)


class PolicyFile(_Model):
    """One file under policies/. Files are merged; every name is unique across them."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="mcp-extproc policy")

    api_version: Literal["mcp-extproc/v1"] = Field(alias="apiVersion")
    description: str | None = None
    rules: list[Rule] = []
    recording: list[RecordingRules] = []
    viewers: list[Viewer] = []
    integrity: list[Integrity] = []


def json_schema() -> dict[str, Any]:
    """The JSON Schema editors use for policies/*.yaml (checked in as policies/schema.json)."""
    schema = PolicyFile.model_json_schema(by_alias=True)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
    }


ALL_KEYS: frozenset[str] = frozenset(
    (f.alias or n)
    for m in (
        ClaimMatch,
        Subjects,
        Targets,
        ArgConstraint,
        KubernetesCheck,
        Limit,
        Rule,
        Redaction,
        RecordingRules,
        Viewer,
        Screens,
        Integrity,
        PolicyFile,
    )
    for n, f in m.model_fields.items()
)
"""Every key the format knows; used to suggest a spelling for an unknown key."""
