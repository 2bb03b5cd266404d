"""`mcp-extproc policy check | explain | test | schema` through typer's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from policy_helpers import write
from typer.testing import CliRunner

from extproc.cli.policy import app

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = str(REPO / "policies")
runner = CliRunner()


def test_check_ok_prints_a_summary() -> None:
    result = runner.invoke(app, ["check", EXAMPLE, "--servers", "demo,github"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"OK {EXAMPLE}: 1 file(s), ")
    assert "rules (" in result.output and "servers: demo, github" in result.output


def test_check_reads_servers_from_gateway_yaml(tmp_path: Path) -> None:
    gateway = write(tmp_path, "gateway.yaml", "servers:\n  - {name: demo, upstream: '127.0.0.1:9000'}\n")
    result = runner.invoke(app, ["check", EXAMPLE, "--gateway", str(gateway)])
    assert result.exit_code == 1
    assert "server 'github' is not defined in gateway.yaml (known: demo)" in result.output


def test_check_failure_lists_file_line_messages(tmp_path: Path) -> None:
    write(
        tmp_path,
        "bad.yaml",
        """
        apiVersion: mcp-extproc/v1
        rules:
          - name: r
            effect: allow
            subjects: {users: [a]}
            targets: {servers: [github], tool: [x]}
    """,
    )
    result = runner.invoke(app, ["check", str(tmp_path), "--servers", "github"])
    assert result.exit_code == 1
    assert f"error {tmp_path / 'bad.yaml'}:6: rule 'r': targets: unknown key 'tool' (did you mean 'tools'?)" in (
        result.output
    )
    assert "OK" not in result.output


def test_explain_shows_decision_rule_and_every_candidate() -> None:
    args = ["explain", EXAMPLE, "--user", "ivan", "--groups", "eng,interns", "--server", "github"]
    args += ["--method", "tools/call", "--tool", "create_issue", "--args", '{"owner": "acme", "title": "x"}']
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output  # 0 allow, 1 deny, 2 error
    lines = result.output.splitlines()
    assert lines[0] == "DENY tools/call 'create_issue' on server 'github'"
    assert "caller:  ivan (groups: eng, interns)" in lines[1]
    assert "decided by: github-interns-readonly (" in lines[2] and "example.yaml:" in lines[2]
    body = "\n".join(lines)
    assert "✗ no      deny  github-no-destructive" in body and "tool 'create_issue' is not listed" in body
    assert "✓ applies deny  github-interns-readonly" in body and "deciding rule: denies" in body
    assert "✓ applies allow github-issues-eng" in body and "not deciding: 'github-interns-readonly' came first" in body
    assert "other rule(s) target other servers, methods or tools" in body


_BUDGETED = """
apiVersion: mcp-extproc/v1
rules:
  - name: search-budget
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [github], tools: [search]}
    limits: [{calls: 30, per: 1m}, {calls: 1000, per: 1d, by: [tool]}]
    on_store_error: open
"""


def test_explain_names_the_limits_of_the_allowing_rule(tmp_path: Path) -> None:
    write(tmp_path, "p.yaml", _BUDGETED)
    args = ["explain", str(tmp_path), "--user", "a", "--server", "github", "--tool", "search"]

    text = runner.invoke(app, args)
    doc = json.loads(runner.invoke(app, [*args, "--json"]).output)

    assert text.exit_code == 0, text.output
    assert "limits:  30 calls per 1m (per caller); 1000 calls per 1d (per caller, tool); over a limit: 429; " in (
        text.output
    )
    assert "counter store down: passes uncounted (open)" in text.output
    assert doc["on_store_error"] == "open" and doc["limits"][1] == {
        "calls": 1000, "per": "1d", "by": ["caller", "tool"], "limit": "1000 calls per 1d (per caller, tool)"
    }  # fmt: skip
    denied = runner.invoke(app, ["explain", str(tmp_path), "--user", "a", "--server", "github", "--tool", "x"])
    assert denied.exit_code == 1 and "limits:" not in denied.output  # a denied call spends no budget


def test_explain_default_deny_with_claims() -> None:
    args = ["explain", EXAMPLE, "--user", "rita", "--groups", "release-managers", "--server", "github"]
    args += ["--tool", "merge_pull_request", "--args", '{"merge_method": "squash"}', "--claims", '{"amr": ["pwd"]}']
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.output.startswith("DENY ")
    assert "decided by: default-deny" in result.output
    assert "claim 'amr' does not match" in result.output


def test_explain_rejects_bad_json() -> None:
    result = runner.invoke(app, ["explain", EXAMPLE, "--user", "a", "--server", "github", "--args", "{nope"])
    assert result.exit_code == 2 and "--args is not JSON" in result.output


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_explain_refuses_non_finite_numbers_as_the_gateway_does(number: str) -> None:
    args = ["explain", EXAMPLE, "--user", "a", "--server", "demo", "--tool", "count_slowly"]
    result = runner.invoke(app, [*args, "--args", f'{{"n": 2, "delay": {number}}}'])
    assert result.exit_code == 2, result.output
    assert "--args is not JSON" in result.output and f"{number} is not a JSON number" in result.output
    assert runner.invoke(app, [*args, "--args", '{"n": 2, "delay": 0.5}']).exit_code == 0


def test_test_runs_the_example_cases() -> None:
    result = runner.invoke(app, ["test", EXAMPLE, "--servers", "demo,github"])
    assert result.exit_code == 0, result.output
    assert "PASS nobody deletes files, not even engineers" in result.output
    assert "FAIL" not in result.output
    # The summary line (a loopback test server of another test may print into the captured streams meanwhile).
    assert any(line.endswith(" passed, 0 failed") for line in result.output.splitlines())


def test_test_reports_failures_and_exits_non_zero(tmp_path: Path) -> None:
    shutil.copy(REPO / "policies" / "example.yaml", tmp_path / "example.yaml")
    write(
        tmp_path,
        "mine.tests.yaml",
        """
        apiVersion: mcp-extproc/v1
        cases:
          - name: wrong expectation
            who: {user: alice, groups: [eng]}
            server: github
            call: {method: tools/call, tool: delete_file}
            expect: allow
          - name: wrong rule
            who: {user: alice, groups: [eng]}
            server: github
            call: {method: tools/call, tool: get_me}
            expect: allow
            rule: demo-tools-everyone
          - name: right
            who: {user: alice}
            server: demo
            call: {method: ping}
            expect: allow
    """,
    )
    result = runner.invoke(app, ["test", str(tmp_path)])
    assert result.exit_code == 1
    out = result.output
    assert (
        f"FAIL wrong expectation  {tmp_path / 'mine.tests.yaml'}:3  expected allow, got deny by 'github-no-destructive'"
        in out
    )
    assert "FAIL wrong rule" in out and "expected rule 'demo-tools-everyone', got 'github-read-eng' (allow)" in out
    assert "PASS right" in out
    assert out.splitlines()[-1] == "1 passed, 2 failed"


def test_test_reports_bad_case_files(tmp_path: Path) -> None:
    shutil.copy(REPO / "policies" / "example.yaml", tmp_path / "example.yaml")
    write(tmp_path, "x.tests.yaml", "apiVersion: mcp-extproc/v1\ncases:\n  - name: n\n    who: {usr: a}\n")
    result = runner.invoke(app, ["test", str(tmp_path)])
    assert result.exit_code == 1
    assert f"{tmp_path / 'x.tests.yaml'}:4: " in result.output and "unknown key 'usr'" in result.output


def test_test_without_cases_fails(tmp_path: Path) -> None:
    shutil.copy(REPO / "policies" / "example.yaml", tmp_path / "example.yaml")
    result = runner.invoke(app, ["test", str(tmp_path)])
    assert result.exit_code == 1 and "no test cases" in result.output


def test_schema_prints_the_checked_in_schema() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == json.loads((REPO / "policies" / "schema.json").read_text())


# --- exit codes, --json, every problem in one run, folded argument names ------------------------------------------

_EXPLAIN = ["explain", EXAMPLE, "--server", "github", "--tool", "create_issue"]


def test_explain_exit_status_is_0_allow_1_deny_2_error(tmp_path: Path) -> None:
    allowed = runner.invoke(app, [*_EXPLAIN, "--user", "erin", "--groups", "eng", "--args", '{"owner": "acme"}'])
    denied = runner.invoke(app, [*_EXPLAIN, "--user", "erin", "--args", '{"owner": "acme"}'])
    write(tmp_path, "bad.yaml", "apiVersion: mcp-extproc/v1\nrules: 3\n")
    broken = runner.invoke(app, ["explain", str(tmp_path), "--user", "a", "--server", "github", "--tool", "t"])

    assert (allowed.exit_code, denied.exit_code, broken.exit_code) == (0, 1, 2), allowed.output + denied.output
    assert allowed.output.startswith("ALLOW") and denied.output.startswith("DENY")


def test_explain_refuses_a_folded_spelling_of_a_constrained_argument() -> None:
    args = json.dumps({"owner": "acme", "Title": "x" * 1000})
    result = runner.invoke(app, [*_EXPLAIN, "--user", "erin", "--groups", "eng", "--args", args])

    assert result.exit_code == 1, result.output
    assert result.output.startswith("DENY (invalid request: the gateway answers 400)")
    assert "argument 'Title' is a different spelling of 'title'" in result.output


def test_explain_json() -> None:
    args = [*_EXPLAIN, "--user", "erin", "--groups", "eng", "--args", '{"owner": "acme"}', "--json"]
    result = runner.invoke(app, args)

    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["allowed"], doc["invalid"], doc["rule"]) == (True, False, "github-issues-eng")
    assert doc["source"].startswith(f"{EXAMPLE}/example.yaml:")
    assert {"rule": "github-issues-eng", "applies": True}.items() <= next(
        c for c in doc["considered"] if c["rule"] == "github-issues-eng"
    ).items()


def test_check_json_ok_and_errors(tmp_path: Path) -> None:
    ok = runner.invoke(app, ["check", EXAMPLE, "--servers", "demo,github", "--json"])
    write(tmp_path, "bad.yaml", "apiVersion: mcp-extproc/v1\nrules:\n  - name: r\n    effect: maybe\n")
    bad = runner.invoke(app, ["check", str(tmp_path), "--json"])

    assert ok.exit_code == 0 and json.loads(ok.output)["ok"] is True
    assert json.loads(ok.output)["servers"] == ["demo", "github"]
    assert bad.exit_code == 1
    errors = json.loads(bad.output)["errors"]
    assert {"file": str(tmp_path / "bad.yaml"), "line": 4} in [{k: e[k] for k in ("file", "line")} for e in errors]


def test_test_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["test", EXAMPLE, "--servers", "demo,github", "--json"])

    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["ok"] and doc["failed"] == 0 and doc["passed"] == len(doc["cases"]) > 0


def test_check_reports_every_problem_once_in_one_run(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.yaml",
        """
        apiVersion: mcp-extproc/v1
        rules:
          - name: broken
            effect: maybe
            subjects: {users: ["*"]}
            targets: {servers: [github], tools: [x]}
          - name: fine-but-unknown-server
            effect: allow
            subjects: {users: ["*"]}
            targets: {servers: [gitlab], tools: [x]}
          - name: shared
            effect: allow
            subjects: {users: ["*"]}
            targets: {servers: [github], tools: [x]}
    """,
    )
    write(
        tmp_path,
        "b.yaml",
        """
        apiVersion: mcp-extproc/v1
        rules:
          - name: shared
            effect: allow
            subjects: {users: ["*"]}
            targets: {servers: [github], tools: [y]}
          - name: bad-regex
            effect: allow
            subjects: {users: ["*"]}
            targets: {servers: [github], tools: [create_issue]}
            arguments: {title: {pattern: "("}}
    """,
    )
    result = runner.invoke(app, ["check", str(tmp_path), "--servers", "github"])

    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) == len(set(lines)) == 4, result.output
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert f"error {a}:4: rule 'broken': effect: must be 'allow', 'deny' or 'approve', not 'maybe'" in lines
    assert f"error {b}:11: rule 'bad-regex': arguments.title: pattern: invalid regular expression" in result.output
    # the cross-file checks ran on the valid rules of both invalid files
    assert f"error {a}:10: server 'gitlab' is not defined in gateway.yaml (known: github)" in lines
    assert f"error {b}:3: name 'shared' is already used at {a}:11" in lines


def test_policy_test_cases_see_folded_arguments_as_the_gateway_does(tmp_path: Path) -> None:
    shutil.copy(REPO / "policies" / "example.yaml", tmp_path / "example.yaml")
    write(
        tmp_path,
        "fold.tests.yaml",
        """
        apiVersion: mcp-extproc/v1
        cases:
          - name: a long Title is not a short title
            who: {user: erin, groups: [eng]}
            server: github
            call: {method: tools/call, tool: create_issue, arguments: {owner: acme, Title: "x"}}
            expect: allow
    """,
    )
    result = runner.invoke(app, ["test", str(tmp_path)])

    assert result.exit_code == 1
    assert "expected allow, got deny by 'default-deny'" in result.output


def test_explain_and_test_cases_say_when_an_approval_is_required(tmp_path: Path) -> None:
    write(
        tmp_path,
        "p.yaml",
        """
        apiVersion: mcp-extproc/v1
        rules:
          - name: deletes-need-sre
            effect: approve
            subjects: {users: ["*"]}
            targets: {servers: [github], tools: ["delete_*"]}
            approvers: {groups: [sre]}
            ttl: 15m
    """,
    )
    write(
        tmp_path,
        "p.tests.yaml",
        """
        apiVersion: mcp-extproc/v1
        cases:
          - name: held
            who: {user: erin}
            server: github
            call: {method: tools/call, tool: delete_repo}
            expect: approve
            rule: deletes-need-sre
          - name: not held
            who: {user: erin}
            server: github
            call: {method: tools/call, tool: delete_repo}
            expect: deny
    """,
    )
    explained = runner.invoke(app, ["explain", str(tmp_path), "--user", "erin", "--server", "github",
                                    "--tool", "delete_repo", "--json"])  # fmt: skip
    assert explained.exit_code == 1
    doc = json.loads(explained.output)
    assert doc["approval"] == {"required": True, "approvers": "groups ['sre']", "ttl_s": 900.0, "count": 1}
    tested = runner.invoke(app, ["test", str(tmp_path)])
    assert tested.exit_code == 1
    assert "expected deny, got approve by 'deletes-need-sre'" in tested.output
    assert "PASS held" in tested.output
