"""Compile validated policy files into a CompiledPolicy (``compiled.py``): merge them, check names and servers across
files, bucket rules by (server, method, object name).

Everything here runs once per load. Cross-file checks (unique names, servers known to gateway.yaml) report
``file:line: message`` using the line map the loader kept from the YAML nodes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from extproc.errors import ConfigError
from extproc.mcp.methods import KNOWN_METHODS
from extproc.policy.capture import CaptureLevel, stricter
from extproc.policy.compiled import (
    ANY_SERVER,
    OBJECT_FIELD,
    ApprovalNeed,
    ArgCheck,
    Bucket,
    ClaimCheck,
    CompiledIntegrity,
    CompiledLimit,
    CompiledPolicy,
    CompiledRule,
    CompiledSubjects,
    CompiledViewer,
    KubeCheck,
    RuleBudget,
    ToolCapture,
    bucket_rules,
    value_key,
)
from extproc.policy.globs import compile_globs
from extproc.policy.model import Limit, PolicyFile, Rule, Subjects
from extproc.policy.redact import Redactor, compile_redactor
from extproc.reserved import RESERVED_SERVERS
from extproc.timespec import parse_duration


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


def _keys(values: list[object] | None) -> frozenset[tuple[str, object]] | None:
    return None if values is None else frozenset(k for k in map(value_key, values) if k is not None)


def _split_pointer(pointer: str) -> tuple[str, ...]:
    return tuple(p.replace("~1", "/").replace("~0", "~") for p in pointer[1:].split("/"))


def _index(rules: list[CompiledRule], servers: frozenset[str]) -> dict[tuple[str, str], Bucket]:
    index: dict[tuple[str, str], Bucket] = {}
    for server in (*servers, ANY_SERVER):
        for_server = [r for r in rules if r.servers is None or server in r.servers]
        for method in KNOWN_METHODS:
            matching = [r for r in for_server if r.methods(method)]
            index[(server, method)] = bucket_rules(matching, OBJECT_FIELD.get(method))
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
