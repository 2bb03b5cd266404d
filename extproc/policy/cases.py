"""Policy test cases (``*.tests.yaml`` next to the policies), run by ``mcp-extproc policy test`` like ``opa test``.

A case gives a caller, a server and a call (or a batch, or a recording to view) and the expected outcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from extproc.authn.principal import Principal
from extproc.errors import ConfigError
from extproc.mcp.jsonrpc import McpCall
from extproc.policy.compiled import CompiledPolicy
from extproc.policy.engine import decide, decide_batch, may_view
from extproc.policy.loader import case_files, validate
from extproc.yamlfile import parse_yaml


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Who(_Model):
    user: str
    subject: str | None = Field(None, description="Defaults to user.")
    groups: list[str] = []
    claims: dict[str, Any] = {}

    def principal(self) -> Principal:
        """The Principal this caller stands for."""
        return Principal(
            issuer="policy-test",
            subject=self.subject or self.user,
            username=self.user,
            groups=tuple(self.groups),
            claims=dict(self.claims),
        )


class Call(_Model):
    method: str
    tool: str | None = None
    arguments: dict[str, Any] = {}
    uri: str | None = None
    prompt: str | None = None

    def mcp_call(self, msg_id: int = 1) -> McpCall:
        """The McpCall the gateway would have parsed."""
        return McpCall(self.method, msg_id, self.tool, dict(self.arguments), self.uri, self.prompt)


class View(_Model):
    owner: str = Field(description="Subject of the recording's owner.")


class Case(_Model):
    name: str = Field(min_length=1)
    description: str | None = None
    who: Who
    server: str
    call: Call | None = None
    batch: list[Call] | None = Field(None, min_length=1)
    view: View | None = None
    expect: Literal["allow", "deny", "approve"] = Field(description="approve: an approve rule holds the call")
    rule: str | None = Field(None, description="Expected deciding rule (calls and batches).")

    @model_validator(mode="after")
    def _one(self) -> Case:
        if sum(x is not None for x in (self.call, self.batch, self.view)) != 1:
            raise ValueError("give exactly one of call, batch or view")
        if self.view is not None and self.rule is not None:
            raise ValueError("rule is not checked for view cases")
        return self


class CaseFile(_Model):
    api_version: Literal["mcp-extproc/v1"] = Field(alias="apiVersion")
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class LocatedCase:
    source: str  # file:line
    case: Case


@dataclass(frozen=True, slots=True)
class CaseResult:
    source: str
    name: str
    passed: bool
    detail: str


def load_cases(directory: str | Path) -> list[LocatedCase]:
    """Every case of every ``*.tests.yaml`` in ``directory``; raises ConfigError with file:line problems."""
    out: list[LocatedCase] = []
    errors: list[str] = []
    for path in case_files(directory):
        try:
            doc, lines = parse_yaml(path.read_bytes(), str(path))
            tf = validate(CaseFile, doc, str(path), lines)
        except ConfigError as e:
            errors.extend(str(e).splitlines())
            continue
        except OSError as e:
            errors.append(f"{path}: cannot read: {e.strerror}")
            continue
        out += [LocatedCase(f"{path}:{lines.get(('cases', str(i)), 1)}", c) for i, c in enumerate(tf.cases)]
    if errors:
        raise ConfigError("\n".join(errors))
    return out


def run_case(policy: CompiledPolicy, lc: LocatedCase) -> CaseResult:
    """Evaluate one case against the policy."""
    c = lc.case
    who = c.who.principal()
    held = False  # a call an approve rule holds (a batch holding one is refused whole: deny)
    if c.view is not None:
        allowed, rule = may_view(policy, who, c.server, c.view.owner), None
    elif c.batch is not None:
        d = decide_batch(policy, who, c.server, [x.mcp_call(i) for i, x in enumerate(c.batch)])
        allowed, rule = d.allowed, d.rule
    else:
        assert c.call is not None
        d = decide(policy, who, c.server, c.call.mcp_call())
        allowed, rule = d.allowed, d.rule
        held = d.approval is not None
    got = "approve" if held else "allow" if allowed else "deny"
    by = f" by {rule!r}" if rule is not None else ""
    if got != c.expect:
        return CaseResult(lc.source, c.name, False, f"expected {c.expect}, got {got}{by}")
    if c.rule is not None and rule != c.rule:
        return CaseResult(lc.source, c.name, False, f"expected rule {c.rule!r}, got {rule!r} ({got})")
    return CaseResult(lc.source, c.name, True, f"{got}{by}")


def run_cases(policy: CompiledPolicy, cases: list[LocatedCase]) -> list[CaseResult]:
    """Evaluate every case."""
    return [run_case(policy, lc) for lc in cases]
