"""Compile validated policy files into lookup structures: rules bucketed by (server, method, object name).

Everything here runs once per load. Cross-file checks (unique names, servers known to gateway.yaml) report
``file:line: message`` using the line map the loader kept from the YAML nodes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from extproc.errors import ConfigError
from extproc.mcp.methods import KNOWN_METHODS
from extproc.policy.capture import DEFAULT_LEVEL, CaptureLevel, stricter
from extproc.policy.globs import Matcher, compile_globs
from extproc.policy.model import PROMPT_METHODS, RESOURCE_METHODS, TOOL_METHODS, Limit, PolicyFile, Rule, Subjects
from extproc.policy.redact import Redactor, compile_redactor
from extproc.reserved import AUDIT_SERVER as AUDIT_SERVER
from extproc.reserved import RESERVED_SERVERS as RESERVED_SERVERS
from extproc.timespec import parse_duration

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
class LoadedFile:
    """One parsed policy file with the YAML line of every key path (keys are str(segment))."""

    path: str
    doc: PolicyFile
    lines: dict[tuple[str, ...], int]

    def where(self, *loc: object) -> str:
        """``file:line`` of the deepest known node on ``loc``."""
        key = tuple(str(p) for p in loc)
        while key and key not in self.lines:
            key = key[:-1]
        return f"{self.path}:{self.lines.get(key, 1)}"


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
        return _bucket(rules, OBJECT_FIELD.get(method))

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


def compile_policy(
    files: Sequence[LoadedFile], known_servers: set[str] | None, fingerprint: str = ""
) -> CompiledPolicy:
    """Merge and compile validated files; raises ConfigError listing every cross-file problem."""
    errors: list[str] = []
    seen: dict[str, str] = {}
    rules: list[CompiledRule] = []
    viewers: list[CompiledViewer] = []
    integrity: list[CompiledIntegrity] = []
    budgets: dict[str, RuleBudget] = {}
    named: set[str] = set()
    captures: dict[str, CaptureLevel] = {}
    tool_captures: list[ToolCapture] = []

    def claim_name(name: str, where: str) -> None:
        if name in seen:
            errors.append(f"{where}: name {name!r} is already used at {seen[name]}")
        else:
            seen[name] = where

    def check_servers(lf: LoadedFile, servers: list[str], *loc: object) -> frozenset[str] | None:
        for i, s in enumerate(servers):
            if s != ANY_SERVER and known_servers is not None and s not in known_servers | RESERVED_SERVERS:
                known = ", ".join(sorted(known_servers)) or "none"
                errors.append(f"{lf.where(*loc, i)}: server {s!r} is not defined in gateway.yaml (known: {known})")
        named.update(s for s in servers if s != ANY_SERVER)
        return None if ANY_SERVER in servers else frozenset(servers)

    for lf in files:
        for i, rule in enumerate(lf.doc.rules):
            where = lf.where("rules", i)
            claim_name(rule.name, where)
            t = rule.targets
            objects = {
                fld: compile_globs(pats, uri=fld == "uri")
                for fld, pats in (("tool", t.tools), ("uri", t.resources), ("prompt", t.prompts))
                if pats
            }
            args = tuple(
                ArgCheck(
                    name=n,
                    values=_keys(c.values),
                    regex=re.compile(c.pattern) if c.pattern is not None else None,
                    min=c.min,
                    max=c.max,
                    max_length=c.max_length,
                    optional=c.optional,
                )
                for n, c in (rule.arguments or {}).items()
            )
            if rule.limits is not None:
                budgets[rule.name] = _budget(rule.name, rule.limits, rule.on_store_error == "open")
            rules.append(
                CompiledRule(
                    name=rule.name,
                    deny=rule.effect == "deny",
                    order=len(rules),
                    source=where,
                    subjects=_subjects(rule.subjects),
                    servers=check_servers(lf, t.servers, "rules", i, "targets", "servers"),
                    methods=compile_globs(t.effective_methods()),
                    objects=objects,
                    arguments=args,
                    description=rule.description or "",
                    kubernetes=KubeCheck(**rule.kubernetes.model_dump()) if rule.kubernetes is not None else None,
                    approval=_approval(rule),
                )
            )
        for i, v in enumerate(lf.doc.viewers):
            where = lf.where("viewers", i)
            claim_name(v.name, where)
            servers = check_servers(lf, v.servers, "viewers", i, "servers")
            viewers.append(CompiledViewer(v.name, where, _subjects(v.subjects), servers, v.sessions == "all"))
        for i, rec in enumerate(lf.doc.recording):
            rec_servers = check_servers(lf, rec.servers, "recording", i, "servers")
            if rec.capture is not None and rec.tools is not None:
                tool_captures.append(ToolCapture(rec_servers, compile_globs(rec.tools), rec.capture))
            elif rec.capture is not None:
                for s in rec.servers:
                    captures[s] = stricter(captures.get(s, rec.capture), rec.capture)
            for j, red in enumerate(rec.redact):
                claim_name(red.name, lf.where("recording", i, "redact", j))
        for i, ig in enumerate(lf.doc.integrity):
            servers = check_servers(lf, ig.servers, "integrity", i, "servers")
            integrity.append(
                CompiledIntegrity(
                    lf.where("integrity", i), servers, compile_globs(ig.tools) if ig.tools else None,
                    ig.on_change, ig.screens.model_dump(),
                )
            )  # fmt: skip
    if errors:
        raise ConfigError("\n".join(errors))

    servers = frozenset(named | (known_servers or set()))
    return CompiledPolicy(
        rules=tuple(rules),
        viewers=tuple(viewers),
        files=tuple(lf.path for lf in files),
        fingerprint=fingerprint,
        servers=servers,
        index=_index(rules, servers),
        redactors=_redactors(files, servers),
        checks={
            s: tuple(
                dict.fromkeys(r.kubernetes for r in rules if r.kubernetes and (r.servers is None or s in r.servers))
            )
            for s in (*servers, ANY_SERVER)
        },
        integrity_entries=tuple(integrity),
        budgets=budgets,
        captures=_captures(captures),
        tool_captures=tuple(tool_captures),
    )


def _budget(rule: str, limits: Sequence[Limit], fail_open: bool) -> RuleBudget:
    compiled = tuple(
        CompiledLimit(lim.calls, parse_duration(lim.per), lim.per, "tool" in lim.by, "server" in lim.by)
        for lim in limits
    )
    return RuleBudget(rule, compiled, fail_open)


def _approval(rule: Rule) -> ApprovalNeed | None:
    if rule.effect != "approve" or rule.approvers is None:
        return None
    a = rule.approvers
    text = "; ".join(
        f"{k} {v}" for k, v in (("users", a.users), ("groups", a.groups), ("claims", [c.claim for c in a.claims])) if v
    )
    return ApprovalNeed(_subjects(a), rule.ttl_seconds() or 0.0, rule.count or 1, text)


def compile_subjects(s: Subjects) -> CompiledSubjects:
    """Subjects ready for ``engine.subjects_miss`` (also used by gateway.yaml backends and grants)."""
    return _subjects(s)


def _subjects(s: Subjects) -> CompiledSubjects:
    claims = tuple(
        ClaimCheck(
            claim=c.claim,
            pointer=_split_pointer(c.claim) if c.claim.startswith("/") else None,
            values=_keys(c.values),
            regex=re.compile(c.pattern) if c.pattern is not None else None,
        )
        for c in s.claims
    )
    users = frozenset(u for u in s.users if u != "*")
    return CompiledSubjects(any_user="*" in s.users, users=users, groups=frozenset(s.groups), claims=claims)


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


def _keys(values: list[object] | None) -> frozenset[tuple[str, object]] | None:
    return None if values is None else frozenset(k for k in map(value_key, values) if k is not None)


def _split_pointer(pointer: str) -> tuple[str, ...]:
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/"))


def _bucket(rules: Sequence[CompiledRule], obj_field: str | None) -> Bucket:
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


def _index(rules: list[CompiledRule], servers: frozenset[str]) -> dict[tuple[str, str], Bucket]:
    index: dict[tuple[str, str], Bucket] = {}
    for server in (*servers, ANY_SERVER):
        for_server = [r for r in rules if r.servers is None or server in r.servers]
        for method in KNOWN_METHODS:
            index[(server, method)] = _bucket([r for r in for_server if r.methods(method)], OBJECT_FIELD.get(method))
    return index


def _captures(named: dict[str, CaptureLevel]) -> dict[str, CaptureLevel]:
    """Server-wide levels: an entry for every server (``*``) also bounds each server named on its own."""
    anyone = named.get(ANY_SERVER)
    if anyone is None:
        return named
    return {s: stricter(level, anyone) for s, level in named.items()}


def _redactors(files: Sequence[LoadedFile], servers: frozenset[str]) -> dict[str, Redactor]:
    out: dict[str, Redactor] = {}
    entries = [rec for lf in files for rec in lf.doc.recording]
    for server in (*servers, ANY_SERVER):
        applies = [e for e in entries if ANY_SERVER in e.servers or server in e.servers]
        out[server] = compile_redactor(
            [red for e in applies for red in e.redact], defaults=all(e.defaults for e in applies)
        )
    return out
