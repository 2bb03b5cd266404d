"""The comparison the conformance runner rests on: what counts as the same result, and the known-differences file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from compare import Difference, differences, judge, load_expected, table
from suite import Result, read_results


def res(scenario: str, **checks: str) -> Result:
    return Result(scenario, tuple(checks.items()))


def results(direct: list[Result], gateway: list[Result], leg: str = "L", mode: str = "auth") -> dict:
    return {(leg, "direct"): {r.scenario: r for r in direct}, (leg, mode): {r.scenario: r for r in gateway}}


@pytest.mark.parametrize(
    ("direct", "gateway", "changed"),
    [
        pytest.param(res("s", a="SUCCESS"), res("s", a="SUCCESS"), None, id="same"),
        pytest.param(res("s", a="FAILURE"), res("s", a="FAILURE"), None, id="same-failure"),
        pytest.param(res("s", a="SUCCESS", b="FAILURE"), res("s", b="FAILURE", a="SUCCESS"), None, id="order"),
        pytest.param(res("s", a="SUCCESS"), res("s", a="FAILURE"), {"a": ("SUCCESS", "FAILURE")}, id="worse"),
        pytest.param(res("s", a="FAILURE"), res("s", a="SUCCESS"), {"a": ("FAILURE", "SUCCESS")}, id="better"),
        pytest.param(res("s", a="SUCCESS"), res("s", a="SUCCESS", b="WARNING"), {"b": ("-", "WARNING")}, id="extra"),
        pytest.param(res("s", a="SUCCESS", b="SKIPPED"), res("s", a="SUCCESS"), {"b": ("SKIPPED", "-")}, id="less"),
    ],
)
def test_same_result_means_same_checks_with_same_status(direct: Result, gateway: Result, changed: dict | None) -> None:
    found = differences("L", "auth", {"s": direct}, {"s": gateway})
    assert found == ([] if changed is None else [Difference("L", "auth", "s", changed)])


def test_a_scenario_run_one_way_only_differs() -> None:
    found = differences("L", "anonymous", {"s": res("s", a="SUCCESS")}, {})
    assert found == [Difference("L", "anonymous", "s", only="directly")]


def test_judge_sorts_expected_unexpected_and_stale() -> None:
    run = results(
        [res("known", a="SUCCESS"), res("new", a="SUCCESS"), res("fixed", a="SUCCESS"), res("partly", a="S", b="S")],
        [res("known", a="FAILURE"), res("new", a="FAILURE"), res("fixed", a="SUCCESS"), res("partly", a="F", b="F")],
    )
    expected = {"auth": {"known": {"a": "why"}, "fixed": {"a": "was a gap"}, "partly": {"a": "only a"}}}
    verdict = judge(run, ["L"], ["auth"], expected)
    assert [d.scenario for d in verdict.unexpected] == ["new", "partly"]  # partly: b differs and is not listed
    assert [(d.scenario, why) for d, why in verdict.expected] == [("known", ["why"])]
    assert verdict.stale == ["auth / fixed: a (listed as expected, but the same both ways)"]
    assert not verdict.ok
    rows = "\n".join(table(run, ["L"], ["auth"], verdict))
    assert "known" in rows and " NO" in rows


def test_staleness_is_not_judged_on_a_subset_of_legs() -> None:
    run = results([res("s", a="SUCCESS")], [res("s", a="SUCCESS")])
    assert judge(run, ["L"], ["auth"], {"auth": {"s": {"a": "differs on another wire"}}}, stale=False).ok
    assert not judge(run, ["L"], ["auth"], {"auth": {"s": {"a": "differs on another wire"}}}).ok


def test_entries_for_another_mode_or_a_scenario_not_run_are_not_stale() -> None:
    run = results([res("s", a="SUCCESS")], [res("s", a="SUCCESS")], mode="anonymous")
    verdict = judge(run, ["L"], ["anonymous"], {"auth": {"s": {"a": "why"}}, "anonymous": {"other": {"a": "why"}}})
    assert verdict.ok and not verdict.stale


def test_known_differences_file_loads(tmp_path: Path) -> None:
    assert set(load_expected()) <= {"reference", "fixture"}
    bad = tmp_path / "x.yaml"
    bad.write_text("sample:\n  auth:\n    s:\n      - a\n")
    with pytest.raises(ValueError, match=r"x.yaml: sample.auth.s: give each check id with its reason"):
        load_expected(bad)


def test_read_results_takes_every_scenario_folder(tmp_path: Path) -> None:
    for name, checks in [
        ("server-tools-list-2026-12-01T21-47-53-408Z", [{"id": "tools-list", "status": "SUCCESS"}]),
        ("server-input-required-result-multi-round-2026-12-01T21-47-56-315Z", [{"id": "x", "status": "FAILURE"}]),
    ]:
        (tmp_path / name).mkdir()
        (tmp_path / name / "checks.json").write_text(json.dumps(checks))
    (tmp_path / "not-a-result").mkdir()
    got = read_results(tmp_path)
    assert got["tools-list"].passed
    assert got["input-required-result-multi-round"].failed == ["x"]
    assert set(got) == {"tools-list", "input-required-result-multi-round"}
