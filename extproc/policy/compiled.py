"""The compiled policy: lookup structures built once per load (``compiler.py``), read on every request.

Rules are bucketed by (server, method, object name); each bucket lists deny rules first, then approve rules, then
allow rules. ``CompiledPolicy`` is immutable: a reload builds a new one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from extproc.policy.capture import DEFAULT_LEVEL, CaptureLevel, stricter
from extproc.policy.globs import Matcher
from extproc.policy.model import PROMPT_METHODS, RESOURCE_METHODS, TOOL_METHODS
from extproc.policy.redact import Redactor
from extproc.reserved import AUDIT_SERVER as AUDIT_SERVER
from extproc.reserved import RESERVED_SERVERS as RESERVED_SERVERS

ANY_SERVER = "*"
# A list request is filtered with the decisions of the call that uses an item: it needs that call's reviews too.
_USES = {"tools/list": ("tools/call",), "resources/list": ("resources/read",), "prompts/list": ("prompts/get",)}

# Which McpCall field names the object a method acts on (and so which index key it is bucketed by).
OBJECT_FIELD: dict[str, str] = {
    **{m: "tool" for m in TOOL_METHODS},
    **{m: "uri" for m in RESOURCE_METHODS},
    **{m: "prompt" for m in PROMPT_METHODS},
}


@dataclass(frozen=True, slots=True)
class ClaimCheck:
    claim: str
    pointer: tuple[str, ...] | None  # set when the claim is given as a JSON pointer
    values: frozenset[tuple[str, object]] | None  # value_key() of each allowed value
    regex: re.Pattern[str] | None


@dataclass(frozen=True, slots=True)
class CompiledSubjects:
    any_user: bool
    users: frozenset[str]
    groups: frozenset[str]
    claims: tuple[ClaimCheck, ...]

    @property
    def names_someone(self) -> bool:
        """True when users or groups are given (otherwise only the claims decide)."""
        return self.any_user or bool(self.users or self.groups)


@dataclass(frozen=True, slots=True)
class ArgCheck:
    name: str
    values: frozenset[tuple[str, object]] | None  # value_key() of each allowed value
    regex: re.Pattern[str] | None
    min: float | None
    max: float | None
    max_length: int | None
    optional: bool


@dataclass(frozen=True, slots=True)
class KubeCheck:
    """A rule's Kubernetes authorization requirement; hashable, so reviews are cached and shared by it."""

    verb: str
    group: str
    resource: str
    name: str | None = None
    namespace: str | None = None
    subresource: str | None = None

    def to_record(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if getattr(self, k) is not None}


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    """One budget of a rule: at most ``calls`` in any ``window`` seconds; ``per`` as written (for messages)."""

    calls: int
    window: float
    per: str
    by_tool: bool = False
    by_server: bool = False

    @property
    def by(self) -> list[str]:
        """What the counter is kept per besides the caller: server and/or tool."""
        return [*(["server"] if self.by_server else []), *(["tool"] if self.by_tool else [])]

    def describe(self) -> str:
        """'30 calls per 1m (per caller, tool)': how a refusal and ``policy explain`` name it."""
        return f"{self.calls} calls per {self.per} (per {', '.join(['caller', *self.by])})"


@dataclass(frozen=True, slots=True)
class RuleBudget:
    """The limits of one allow rule, and what a failing counter store means for it."""

    rule: str
    limits: tuple[CompiledLimit, ...]
    fail_open: bool = False  # on_store_error: open


@dataclass(frozen=True, slots=True)
class ApprovalNeed:
    """What an ``effect: approve`` rule asks for: who may approve, for how long, how many identical calls."""

    approvers: CompiledSubjects
    ttl: float
    count: int
    text: str  # the approvers as written, for explain and the caller's error ("groups [sre]")


@dataclass(frozen=True, slots=True, eq=False)
class CompiledRule:
    """A rule ready to evaluate; ``order`` is its position across all files (file name order)."""

    name: str
    deny: bool
    order: int
    source: str
    subjects: CompiledSubjects
    servers: frozenset[str] | None  # None: every server
    methods: Matcher
    objects: dict[str, Matcher]  # McpCall field ("tool", "uri", "prompt") -> matcher, only for listed kinds
    arguments: tuple[ArgCheck, ...]
    description: str = ""
    kubernetes: KubeCheck | None = None
    approval: ApprovalNeed | None = None  # effect: approve (``deny`` is False: it is not a denial)

    @property
    def effect(self) -> str:
        return "deny" if self.deny else "approve" if self.approval is not None else "allow"


@dataclass(frozen=True, slots=True)
class CompiledViewer:
    name: str
    source: str
    subjects: CompiledSubjects
    servers: frozenset[str] | None
    all_sessions: bool


@dataclass(frozen=True, slots=True, eq=False)
class CompiledIntegrity:
    """One ``integrity`` entry ready to apply (extproc/tools/surface.py reads it)."""

    source: str
    servers: frozenset[str] | None
    items: Matcher | None  # None: every item of the servers
    on_change: str
    screens: dict[str, str]  # screen -> action


DEFAULT_INTEGRITY = CompiledIntegrity(
    "default",
    None,
    None,
    "hide",
    {
        "invisible": "strip",
        "instructions": "alarm",
        "cross_server": "alarm",
        "results": "strip",
        "result_markers": "alarm",
    },
)


Candidates = tuple[tuple[CompiledRule, ...], tuple[str, ...]]
"""Rules in evaluation order and their names (precomputed, so a Decision's ``considered`` is a slice)."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """Candidate rules for one (server, method): deny rules first, then approve rules, then allow rules, each in
    policy order."""

    generic: Candidates
    by_object: dict[str, Candidates]  # exact object name -> its rules merged with ``generic``

    def candidates(self, obj: str | None) -> Candidates:
        """Rules that may apply to a call on ``obj`` (tool name, URI or prompt)."""
        if obj is None:
            return self.generic
        return self.by_object.get(obj, self.generic)


@dataclass(frozen=True, slots=True, eq=False)
class CompiledPolicy:
    """The merged, compiled policy of a directory. Immutable: a reload builds a new one."""

    rules: tuple[CompiledRule, ...]
    viewers: tuple[CompiledViewer, ...]
    files: tuple[str, ...]
    fingerprint: str
    servers: frozenset[str]  # servers named in rules or known to the gateway
    index: dict[tuple[str, str], Bucket] = field(repr=False)
    redactors: dict[str, Redactor] = field(repr=False)
    checks: dict[str, tuple[KubeCheck, ...]] = field(default_factory=dict, repr=False)
    integrity_entries: tuple[CompiledIntegrity, ...] = ()
    budgets: dict[str, RuleBudget] = field(default_factory=dict, repr=False)  # rule name -> its limits

    captures: dict[str, CaptureLevel] = field(default_factory=dict)  # server -> level named by server-wide entries
    tool_captures: tuple[ToolCapture, ...] = ()  # per-tool entries, in policy order

    def integrity(self, server: str, item: str | None = None) -> CompiledIntegrity:
        """The integrity settings for an item of ``server``: an entry naming the item beats a server-wide one,
        then policy order; none: the defaults (hide changes, strip invisible characters, alarm the rest)."""
        server_wide = None
        for e in self.integrity_entries:
            if e.servers is not None and server not in e.servers:
                continue
            if e.items is None:
                server_wide = server_wide or e
            elif item is not None and e.items(item):
                return e
        return server_wide or DEFAULT_INTEGRITY

    def bucket(self, server: str, method: str) -> Bucket:
        """Candidate rules for a server and method; unknown methods take the (rare) slow path."""
        key = server if server in self.servers else ANY_SERVER
        found = self.index.get((key, method))
        if found is not None:
            return found
        rules = [r for r in self.rules if (r.servers is None or key in r.servers) and r.methods(method)]
        return bucket_rules(rules, OBJECT_FIELD.get(method))

    def kube_checks(self, server: str, methods: Iterable[str] | None = None) -> tuple[KubeCheck, ...]:
        """The Kubernetes checks rules for ``server`` (and these methods) may need: reviewed before deciding."""
        key = server if server in self.servers else ANY_SERVER
        if methods is None:
            return self.checks.get(key, ())
        if not self.checks.get(key):
            return ()
        wanted = {m for method in methods for m in (method, *_USES.get(method, ()))}
        found: dict[KubeCheck, None] = {}
        for method in wanted:
            for rule in self.bucket(server, method).generic[0]:
                if rule.kubernetes is not None:
                    found[rule.kubernetes] = None
            for rules, _ in self.bucket(server, method).by_object.values():
                found.update((r.kubernetes, None) for r in rules if r.kubernetes is not None)
        return tuple(found)

    def redactor(self, server: str) -> Redactor:
        """The redactions that apply to recordings of ``server``."""
        return self.redactors.get(server) or self.redactors[ANY_SERVER]

    def capture(self, server: str, tools: Iterable[str] = ()) -> CaptureLevel:
        """The capture level for ``server`` (and, for tools/call, these tools): the strictest entry wins."""
        level = self.captures.get(server) or self.captures.get(ANY_SERVER) or DEFAULT_LEVEL
        for tc in self.tool_captures:
            if (tc.servers is None or server in tc.servers) and any(tc.tools(t) for t in tools):
                level = stricter(level, tc.level)
        return level

    def header_capture(self, server: str) -> CaptureLevel:
        """The level for what is recorded before the body is read (headers carry arguments: Mcp-Param-*): the
        strictest of the server's own level and every per-tool level of the server."""
        level = self.capture(server)
        for tc in self.tool_captures:
            if tc.servers is None or server in tc.servers:
                level = stricter(level, tc.level)
        return level


@dataclass(frozen=True, slots=True)
class ToolCapture:
    """A per-tool capture entry: servers (None: any), tool globs, level."""

    servers: frozenset[str] | None
    tools: Callable[[str], bool]
    level: CaptureLevel


def value_key(v: object) -> tuple[str, object] | None:
    """A hashable, type-exact key for a JSON scalar: 1 == 1.0, but True != 1 and "1" != 1; None if not a scalar."""
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, int | float):
        # NaN equals nothing, and a non-finite number is not JSON: treated as no scalar (a condition on it fails closed)
        return ("n", v) if isinstance(v, int) or math.isfinite(v) else None
    if isinstance(v, str):
        return ("s", v)
    return None


def bucket_rules(rules: Sequence[CompiledRule], obj_field: str | None) -> Bucket:
    """The candidate rules of one (server, method) in evaluation order, filed by exact object name."""
    ordered = sorted(rules, key=lambda r: (0 if r.deny else 1 if r.approval is not None else 2, r.order))
    if obj_field is None:
        return Bucket(generic=_named(ordered), by_object={})
    # A rule listing only exact names is filed under each name; one with a glob (or no filter) is generic.
    generic = [r for r in ordered if obj_field not in r.objects or r.objects[obj_field].has_wildcards]
    is_generic = set(generic)
    names = {n for r in ordered if r not in is_generic for n in r.objects[obj_field].exact}
    by_object = {
        n: _named([r for r in ordered if r in is_generic or n in r.objects[obj_field].exact]) for n in sorted(names)
    }
    return Bucket(generic=_named(generic), by_object=by_object)


def _named(rules: Sequence[CompiledRule]) -> Candidates:
    return tuple(rules), tuple(r.name for r in rules)
