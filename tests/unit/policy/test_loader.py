"""Loading: strict validation with file:line messages, merging, indexes, the schema file, and the watcher."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest
import yaml
from policy_helpers import SERVERS, who, write

from extproc.errors import ConfigError
from extproc.mcp.jsonrpc import McpCall
from extproc.policy import PolicyWatcher, decide, load_policy
from extproc.policy.model import json_schema

REPO = Path(__file__).resolve().parents[3]

GOOD = """
apiVersion: mcp-extproc/v1
rules:
  - name: eng-read
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: [github], tools: ["get_*"]}
"""


def load_error(directory: Path, servers: set[str] | None = SERVERS) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_policy(directory, servers)
    return str(e.value).splitlines()


@pytest.mark.parametrize(
    ("snippet", "line", "message"),
    [
        pytest.param("    tool: [x]\n", 8, "rule 'r': targets: unknown key 'tool' (did you mean 'tools'?)",
                     id="unknown-key"),
        pytest.param("    tools: ['get_[']\n", 8, "rule 'r': targets.tools[0]: unterminated character class",
                     id="bad-glob"),
        pytest.param("    methods: [tool/call]\n", 8, "method 'tool/call' matches no MCP method", id="bad-method"),
        pytest.param("    servers: [gitlab]\n", 8, "duplicate key 'servers'", id="duplicate-yaml-key"),
    ],
)  # fmt: skip
def test_rule_errors_name_file_and_line(policy_dir: Path, snippet: str, line: int, message: str) -> None:
    text = (
        "apiVersion: mcp-extproc/v1\nrules:\n  - name: r\n    effect: allow\n    subjects: {users: [a]}\n"
        "    targets:\n      servers: [github]\n"
    )
    text += "  " + snippet  # nested under targets
    write(policy_dir, "a.yaml", text)
    [err] = load_error(policy_dir)
    assert err.startswith(f"{policy_dir / 'a.yaml'}:{line}: ")
    assert message in err


def test_bad_regex_in_argument(policy_dir: Path) -> None:
    write(
        policy_dir,
        "a.yaml",
        """
        apiVersion: mcp-extproc/v1
        rules:
          - name: r
            effect: allow
            subjects: {users: [a]}
            targets: {servers: [github], tools: [t]}
            arguments:
              repo:
                pattern: "(unclosed"
    """,
    )
    [err] = load_error(policy_dir)
    assert err.startswith(f"{policy_dir / 'a.yaml'}:9: rule 'r': arguments.repo: pattern: invalid regular expression")


def test_unknown_server(policy_dir: Path) -> None:
    write(policy_dir, "a.yaml", GOOD.replace("servers: [github]", "servers: [github, gitlab]"))
    assert load_error(policy_dir) == [
        f"{policy_dir / 'a.yaml'}:6: server 'gitlab' is not defined in gateway.yaml (known: demo, github, jira)"
    ]
    assert load_policy(policy_dir, None).servers == {"github", "gitlab"}  # no gateway.yaml given: not checked


def test_duplicate_rule_names_across_files(policy_dir: Path) -> None:
    write(policy_dir, "a.yaml", GOOD)
    write(policy_dir, "b.yaml", GOOD.replace("groups: [eng]", "groups: [ops]"))
    assert load_error(policy_dir) == [
        f"{policy_dir / 'b.yaml'}:3: name 'eng-read' is already used at {policy_dir / 'a.yaml'}:3"
    ]


def test_all_problems_of_all_files_are_reported(policy_dir: Path) -> None:
    write(policy_dir, "a.yaml", "apiVersion: mcp-extproc/v2\nrules: []\n")
    write(policy_dir, "b.yaml", "apiVersion: mcp-extproc/v1\nrules: [\n")
    write(policy_dir, "c.yaml", GOOD.replace("effect: allow", "effect: permit"))
    a, b, c = load_error(policy_dir)
    assert a == f"{policy_dir / 'a.yaml'}:1: apiVersion: must be 'mcp-extproc/v1', not 'mcp-extproc/v2'"
    assert b.startswith(f"{policy_dir / 'b.yaml'}:3: not valid YAML: ")  # the parser's own words follow
    assert (
        c == f"{policy_dir / 'c.yaml'}:4: rule 'eng-read': effect: must be 'allow', 'deny' or 'approve', not 'permit'"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("", "empty file", id="empty"),
        pytest.param("- a\n", "expected a mapping", id="list"),
        pytest.param("rules: []\n", "missing required key 'apiVersion'", id="no-api-version"),
        pytest.param(GOOD.replace("eng-read", "default-deny"), "is reserved", id="reserved-name"),
        pytest.param(GOOD.replace("subjects: {groups: [eng]}", "subjects: {}"), "at least one of users",
                     id="no-subject"),
        pytest.param(
            GOOD.replace('tools: ["get_*"]', 'methods: [tools/list], tools: ["get_*"]'),
            "tools only apply to tools/call",
            id="tools-unreachable",
        ),
        pytest.param(GOOD + "    limits: [{calls: 3, per: 1w}]\n", "s, m, h or d", id="limit-per-unit"),
        pytest.param(GOOD + "    limits: [{calls: 0, per: 1m}]\n", "greater than or equal to 1", id="limit-zero"),
        pytest.param(GOOD + "    limits: [{calls: 3, per: 0s}]\n", "more than 0", id="limit-empty-window"),
        pytest.param(GOOD + "    limits: [{calls: 3, per: 367d}]\n", "at most 366d", id="limit-window-too-long"),
        pytest.param(GOOD + "    limits: [{calls: 3, per: 1m, by: [user]}]\n", "'tool' or 'server'",
                     id="limit-by-unknown"),
        pytest.param(GOOD + "    limits: []\n", "at least 1 item", id="limits-empty"),
        pytest.param(GOOD.replace("effect: allow", "effect: deny") + "    limits: [{calls: 3, per: 1m}]\n",
                     "limits apply to allow rules only", id="limits-on-deny"),
        pytest.param(GOOD + "    on_store_error: open\n", "on_store_error applies only to a rule with limits",
                     id="store-error-without-limits"),
        pytest.param(GOOD + "    limits: [{calls: 3, per: 1m}]\n    on_store_error: maybe\n", "'closed' or 'open'",
                     id="store-error-unknown"),
    ],
)  # fmt: skip
def test_other_validation_errors(policy_dir: Path, text: str, message: str) -> None:
    write(policy_dir, "a.yaml", text)
    [err] = load_error(policy_dir)
    assert err.startswith(str(policy_dir / "a.yaml") + ":") and message in err


def test_limits_compile_into_the_rules_budget(policy_dir: Path) -> None:
    write(
        policy_dir, "a.yaml", GOOD + "    limits: [{calls: 30, per: 1m}, {calls: 1000, per: 1d, by: [tool, server]}]\n"
    )
    budget = load_policy(policy_dir, SERVERS).budgets["eng-read"]

    assert not budget.fail_open
    assert [(lim.calls, lim.window, lim.describe()) for lim in budget.limits] == [
        (30, 60.0, "30 calls per 1m (per caller)"),
        (1000, 86400.0, "1000 calls per 1d (per caller, server, tool)"),
    ]


def test_test_files_dotfiles_and_other_files_are_ignored(policy_dir: Path) -> None:
    write(policy_dir, "a.yaml", GOOD)
    write(policy_dir, "a.tests.yaml", "not: a policy\n")
    write(policy_dir, ".hidden.yaml", "broken: [\n")
    write(policy_dir, "notes.txt", "hello\n")
    policy = load_policy(policy_dir, SERVERS)
    assert policy.files == (str(policy_dir / "a.yaml"),)


def test_no_policy_files_is_an_error(policy_dir: Path) -> None:
    policy_dir.mkdir()
    assert "no policy files" in load_error(policy_dir)[0]


def test_files_merge_in_name_order(policy_dir: Path) -> None:
    write(policy_dir, "b.yaml", GOOD)
    write(policy_dir, "a.yaml", GOOD.replace("eng-read", "first").replace("[eng]", "[ops]"))
    policy = load_policy(policy_dir, SERVERS)
    assert [r.name for r in policy.rules] == ["first", "eng-read"]
    assert policy.rules[1].source == f"{policy_dir / 'b.yaml'}:3"


def test_index_buckets_rules_by_server_method_and_tool(policy_dir: Path) -> None:
    write(
        policy_dir,
        "a.yaml",
        GOOD
        + """
  - {name: exact, effect: allow, subjects: {users: [a]}, targets: {servers: [github], tools: [create_issue]}}
  - {name: demo-all, effect: allow, subjects: {users: [a]}, targets: {servers: [demo]}}
""",
    )
    policy = load_policy(policy_dir, SERVERS)
    bucket = policy.bucket("github", "tools/call")
    assert bucket.candidates("create_issue")[1] == ("eng-read", "exact")
    assert bucket.candidates("get_me")[1] == ("eng-read",)  # the glob rule is generic
    assert policy.bucket("github", "initialize").candidates(None)[1] == ()
    assert policy.bucket("demo", "initialize").candidates(None)[1] == ("demo-all",)


def test_schema_file_is_current() -> None:
    on_disk = json.loads((REPO / "policies" / "schema.json").read_text())
    assert on_disk == json_schema(), "regenerate: mcp-extproc policy schema > policies/schema.json"


def test_example_policy_loads_and_matches_the_schema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    load_policy(REPO / "policies", {"demo", "github"})
    doc = yaml.safe_load((REPO / "policies" / "example.yaml").read_text())
    jsonschema.Draft202012Validator(json_schema()).validate(doc)
    doc["rules"][0]["targets"]["tool"] = ["x"]
    assert not jsonschema.Draft202012Validator(json_schema()).is_valid(doc)


# --- watcher -------------------------------------------------------------------------------------------------

ALICE_ENG = who("alice", "eng")
GET = McpCall("tools/call", id=1, tool="get_me")
SEARCH = McpCall("tools/call", id=1, tool="search_code")


async def test_watcher_applies_a_good_edit(policy_dir: Path) -> None:
    write(policy_dir, "a.yaml", GOOD)
    watcher = PolicyWatcher(policy_dir, SERVERS)
    assert not decide(watcher.current, ALICE_ENG, "github", SEARCH).allowed
    assert await watcher.check() is False  # nothing changed

    write(policy_dir, "a.yaml", GOOD.replace('"get_*"', '"get_*", search_code'))
    assert await watcher.check() is True
    assert decide(watcher.current, ALICE_ENG, "github", SEARCH).allowed
    assert (watcher.reloads, watcher.reload_failures) == (1, 0)


async def test_watcher_keeps_last_good_policy_on_a_bad_edit(policy_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write(policy_dir, "a.yaml", GOOD)
    watcher = PolicyWatcher(policy_dir, SERVERS)
    good = watcher.current

    write(policy_dir, "a.yaml", GOOD.replace("servers: [github]", "servers: [gitlab]"))
    assert await watcher.check() is False
    assert watcher.current is good
    assert watcher.reload_failures == 1
    assert watcher.last_error is not None and "a.yaml:6: server 'gitlab'" in watcher.last_error
    assert "policy reload rejected" in caplog.text and "gitlab" in caplog.text
    assert await watcher.check() is False and watcher.reload_failures == 1  # counted once per bad version

    (policy_dir / "a.yaml").unlink()  # an empty directory is also a bad version
    assert await watcher.check() is False and watcher.reload_failures == 2
    assert decide(watcher.current, ALICE_ENG, "github", GET).allowed

    write(policy_dir, "a.yaml", GOOD.replace('"get_*"', "search_code"))  # fixed: applied
    assert await watcher.check() is True and watcher.last_error is None
    assert decide(watcher.current, ALICE_ENG, "github", SEARCH).allowed


def test_watcher_refuses_to_start_on_a_bad_policy(policy_dir: Path) -> None:
    write(policy_dir, "a.yaml", "apiVersion: nope\n")
    with pytest.raises(ConfigError):
        PolicyWatcher(policy_dir, SERVERS)


def configmap(directory: Path, version: str, files: dict[str, str]) -> None:
    """Lay out (or update) a directory like the kubelet does for a mounted ConfigMap."""
    data = directory / f"..{version}"
    for name, text in files.items():
        write(data, name, text)
    tmp = directory / "..data_tmp"
    tmp.symlink_to(data.name)
    os.replace(tmp, directory / "..data")  # the atomic swap
    for name in files:
        link = directory / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)


async def test_watcher_follows_a_configmap_symlink_swap(policy_dir: Path) -> None:
    configmap(policy_dir, "2026_01_01_00_00_00.1", {"a.yaml": GOOD})
    watcher = PolicyWatcher(policy_dir, SERVERS)
    link_mtime = os.lstat(policy_dir / "a.yaml").st_mtime_ns

    configmap(policy_dir, "2026_01_01_00_01_00.2", {"a.yaml": GOOD.replace('"get_*"', "search_code")})
    assert os.lstat(policy_dir / "a.yaml").st_mtime_ns == link_mtime  # the file's own link never changed
    assert await watcher.check() is True
    assert decide(watcher.current, ALICE_ENG, "github", SEARCH).allowed
    assert not decide(watcher.current, ALICE_ENG, "github", GET).allowed
    assert watcher.current.files == (str(policy_dir / "a.yaml"),)  # ..data and ..2026_* are not policy files

    configmap(policy_dir, "2026_01_01_00_02_00.3", {"a.yaml": "apiVersion: [\n"})
    assert await watcher.check() is False and watcher.reload_failures == 1
    assert decide(watcher.current, ALICE_ENG, "github", SEARCH).allowed


async def test_watcher_task_polls_until_closed(policy_dir: Path) -> None:
    write(policy_dir, "a.yaml", GOOD)
    changed = asyncio.Event()
    watcher = PolicyWatcher(policy_dir, SERVERS, interval=0.01, on_change=lambda _: changed.set())
    await watcher.start()
    try:
        write(policy_dir, "a.yaml", GOOD.replace('"get_*"', "search_code"))
        await asyncio.wait_for(changed.wait(), timeout=5)
        assert decide(watcher.current, ALICE_ENG, "github", SEARCH).allowed
    finally:
        await watcher.close()
    assert watcher._task is None


async def test_watcher_leaves_the_event_loop_alone_while_nothing_changes(policy_dir: Path) -> None:
    """The poll runs in its own thread: an unchanged directory never wakes the loop that carries the traffic."""
    write(policy_dir, "a.yaml", GOOD)
    changed = asyncio.Event()
    watcher = PolicyWatcher(policy_dir, SERVERS, interval=0.01, on_change=lambda _: changed.set())
    checks = 0
    check = watcher.check

    async def counted() -> bool:
        nonlocal checks
        checks += 1
        return await check()

    watcher.check = counted  # type: ignore[method-assign]
    await watcher.start()
    try:
        await asyncio.sleep(0.3)  # some 30 polls of an unchanged directory
        assert checks == 0
        write(policy_dir, "a.yaml", GOOD.replace('"get_*"', "search_code"))
        await asyncio.wait_for(changed.wait(), timeout=5)  # a change still wakes it, and is installed
        assert checks >= 1 and decide(watcher.current, ALICE_ENG, "github", SEARCH).allowed
    finally:
        await watcher.close()
