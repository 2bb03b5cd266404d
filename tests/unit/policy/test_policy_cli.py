"""`mcp-extproc policy check | explain | test | schema` through typer's CliRunner."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from policy_helpers import write
from typer.testing import CliRunner

from extproc.policy.cli import app

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
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "DENY tools/call 'create_issue' on server 'github'"
    assert "caller:  ivan (groups: eng, interns)" in lines[1]
    assert "decided by: github-interns-readonly (" in lines[2] and "example.yaml:" in lines[2]
    body = "\n".join(lines)
    assert "✗ no      deny  github-no-destructive" in body and "tool 'create_issue' is not listed" in body
    assert "✓ applies deny  github-interns-readonly" in body and "deciding rule: denies" in body
    assert "✓ applies allow github-issues-eng" in body and "not deciding: 'github-interns-readonly' came first" in body
    assert "other rule(s) target other servers, methods or tools" in body


def test_explain_default_deny_with_claims() -> None:
    args = ["explain", EXAMPLE, "--user", "rita", "--groups", "release-managers", "--server", "github"]
    args += ["--tool", "merge_pull_request", "--args", '{"merge_method": "squash"}', "--claims", '{"amr": ["pwd"]}']
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("DENY ")
    assert "decided by: default-deny" in result.output
    assert "claim 'amr' does not match" in result.output


def test_explain_rejects_bad_json() -> None:
    result = runner.invoke(app, ["explain", EXAMPLE, "--user", "a", "--server", "github", "--args", "{nope"])
    assert result.exit_code == 2 and "--args is not JSON" in result.output


def test_test_runs_the_example_cases() -> None:
    result = runner.invoke(app, ["test", EXAMPLE, "--servers", "demo,github"])
    assert result.exit_code == 0, result.output
    assert "PASS nobody deletes files, not even engineers" in result.output
    assert "FAIL" not in result.output
    assert result.output.splitlines()[-1].endswith(" passed, 0 failed")


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
