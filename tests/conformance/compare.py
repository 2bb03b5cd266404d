"""Compare the suite's results direct and through the gateway, against a file of known, explained differences.

Same result means: the same checks, each with the same status. A difference is expected only when every check
that differs is listed, with the reason, in expected-differences.yaml for that server and gateway mode; a listed
check that ran and did not differ is stale, and fails the run like an unexpected difference, so the file only
ever shrinks as the gateway catches up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml
from suite import Result

EXPECTED_FILE = Path(__file__).with_name("expected-differences.yaml")

# server kind -> gateway mode -> scenario -> check id -> why it differs
Expected = dict[str, dict[str, dict[str, str]]]
Results = dict[tuple[str, str], dict[str, Result]]  # (leg, mode) -> scenario -> result


@dataclass(frozen=True)
class Difference:
    leg: str
    mode: str
    scenario: str
    checks: dict[str, tuple[str, str]] = field(default_factory=dict)  # check id -> (direct, through the gateway)
    only: str = ""  # "directly" / "through the gateway" when the scenario ran one way only

    def describe(self) -> str:
        what = (
            f"ran only {self.only}" if self.only else "; ".join(f"{c}: {a} -> {b}" for c, (a, b) in self.checks.items())
        )
        return f"[{self.leg} / {self.mode}] {self.scenario}: {what}"


def differences(leg: str, mode: str, direct: dict[str, Result], gateway: dict[str, Result]) -> list[Difference]:
    """Every scenario whose checks or statuses are not the same both ways."""
    out: list[Difference] = []
    for scenario in sorted(direct.keys() | gateway.keys()):
        a, b = direct.get(scenario), gateway.get(scenario)
        if a is None or b is None:
            out.append(Difference(leg, mode, scenario, only="through the gateway" if a is None else "directly"))
        elif a.signature() != b.signature():
            da, db = dict(a.checks), dict(b.checks)
            changed = {
                c: (da.get(c, "-"), db.get(c, "-")) for c in sorted(da.keys() | db.keys()) if da.get(c) != db.get(c)
            }
            out.append(Difference(leg, mode, scenario, changed or {"(repeated checks)": ("n", "m")}))
    return out


def load_expected(path: Path = EXPECTED_FILE) -> dict[str, Expected]:
    """The known differences per server kind; a malformed file is an error naming the file and the entry."""
    doc = yaml.safe_load(path.read_text()) or {}
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a mapping of server kind -> mode -> scenario -> check -> reason")
    for kind, modes in doc.items():
        for mode, scenarios in (modes or {}).items():
            for scenario, checks in (scenarios or {}).items():
                if not isinstance(checks, dict) or not all(isinstance(w, str) and w for w in checks.values()):
                    raise ValueError(f"{path}: {kind}.{mode}.{scenario}: give each check id with its reason")
    return {kind: modes or {} for kind, modes in doc.items()}


@dataclass
class Verdict:
    unexpected: list[Difference] = field(default_factory=list)
    expected: list[tuple[Difference, list[str]]] = field(default_factory=list)  # with the reasons
    stale: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.stale


def judge(results: Results, legs: list[str], modes: list[str], expected: Expected, stale: bool = True) -> Verdict:
    """Sort every difference into expected or unexpected; find listed checks that no longer differ.

    Entries are per scenario, not per leg (a check may differ on one wire only), so ``stale`` is only sound when
    every leg ran.
    """
    verdict = Verdict()
    seen: set[tuple[str, str, str]] = set()  # (mode, scenario, check) that differed somewhere
    for leg in legs:
        direct = results[(leg, "direct")]
        for mode in modes:
            for diff in differences(leg, mode, direct, results[(leg, mode)]):
                listed = expected.get(mode, {}).get(diff.scenario, {})
                seen.update((mode, diff.scenario, c) for c in diff.checks)
                if diff.only or not set(diff.checks) <= listed.keys():
                    verdict.unexpected.append(diff)
                else:
                    verdict.expected.append((diff, sorted({listed[c] for c in diff.checks})))
    for mode in modes if stale else []:
        ran = {s for leg in legs for s in results[(leg, mode)]}
        for scenario, checks in expected.get(mode, {}).items():
            for check in checks:
                if scenario in ran and (mode, scenario, check) not in seen:
                    verdict.stale.append(f"{mode} / {scenario}: {check} (listed as expected, but the same both ways)")
    return verdict


def _cell(result: Result | None) -> str:
    if result is None:
        return "-"
    return "pass" if result.passed else f"FAIL {len(result.failed)}/{len(result.checks)}"


def table(results: Results, legs: list[str], modes: list[str], verdict: Verdict) -> list[str]:
    """One row per leg and scenario: the result direct and per gateway mode, and whether they agree."""
    differing = {(d.leg, d.scenario): "NO" for d in verdict.unexpected}
    differing.update({(d.leg, d.scenario): differing.get((d.leg, d.scenario), "known") for d, _ in verdict.expected})
    header = f"{'leg':<11} {'scenario':<46} {'direct':<11}" + "".join(f" {m:<11}" for m in modes) + " same"
    lines = [header, "-" * len(header)]
    for leg in legs:
        direct = results[(leg, "direct")]
        for scenario in sorted(direct.keys() | {s for m in modes for s in results[(leg, m)]}):
            cells = "".join(f" {_cell(results[(leg, m)].get(scenario)):<11}" for m in modes)
            same = differing.get((leg, scenario), "yes")
            lines.append(f"{leg:<11} {scenario:<46} {_cell(direct.get(scenario)):<11}{cells} {same}")
    return lines
