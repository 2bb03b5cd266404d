"""decide / decide_batch / filter_list / may_view against the table policy of conftest.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from policy_helpers import who

from extproc.authn.principal import Principal
from extproc.mcp.jsonrpc import McpCall
from extproc.policy import DEFAULT_DENY, CompiledPolicy, decide, decide_batch, explain, filter_list, may_view

ALICE = who("alice")
ENG = who("erin", "eng")
BOB_ENG = who("bob", "eng")
CONTRACTOR = who("carl", "eng", "contractors")
DOCS = who("dora", "docs")
TENANT = who("tim", tenant="acme", email="tim@acme.com")
NOBODY = who("nobody")


def tool(name: str, **arguments: Any) -> McpCall:
    return McpCall("tools/call", id=1, tool=name, arguments=arguments)


ISSUE = {"owner": "acme", "title": "short"}

# (id, principal, server, call, allowed, deciding rule)
TABLE: list[tuple[str, Principal, str, McpCall, bool, str]] = [
    # methods every caller may use, everywhere
    ("initialize-anyone", NOBODY, "github", McpCall("initialize", id=1), True, "basics"),
    ("notification-glob", NOBODY, "jira", McpCall("notifications/resources/updated"), True, "basics"),
    ("tools-list-anyone", NOBODY, "demo", McpCall("tools/list", id=2), True, "basics"),
    ("resources-list-not-in-basics", NOBODY, "demo", McpCall("resources/list", id=2), False, DEFAULT_DENY),
    ("unknown-method-default-deny", ENG, "github", McpCall("x-vendor/thing", id=3), False, DEFAULT_DENY),
    ("unknown-server-default-deny", ENG, "gitlab", tool("get_me"), False, DEFAULT_DENY),
    # users
    ("user-any-method-on-demo", ALICE, "demo", McpCall("prompts/list", id=1), True, "alice-demo-everything"),
    ("user-any-tool-on-demo", ALICE, "demo", tool("anything"), True, "alice-demo-everything"),
    ("user-not-on-github", ALICE, "github", tool("get_me"), False, DEFAULT_DENY),
    # groups x tools (exact and glob)
    ("group-tool-glob", ENG, "github", tool("get_file_contents"), True, "eng-github-read"),
    ("group-tool-exact", ENG, "github", tool("search_code"), True, "eng-github-read"),
    ("group-tool-not-listed", ENG, "github", tool("search_issues"), False, DEFAULT_DENY),
    ("group-wrong-server", ENG, "demo", tool("get_file_contents"), False, DEFAULT_DENY),
    ("no-group", NOBODY, "github", tool("get_me"), False, DEFAULT_DENY),
    # argument constraints: values, max_length, min/max, pattern, optional
    ("args-all-ok", ENG, "github", tool("create_issue", **ISSUE), True, "eng-github-issues"),
    ("args-values-second", ENG, "github", tool("create_issue", owner="acme-labs", title="t"), True,
     "eng-github-issues"),
    ("args-values-miss", ENG, "github", tool("create_issue", owner="evil", title="t"), False, DEFAULT_DENY),
    ("args-values-type-exact", ENG, "github", tool("create_issue", owner=["acme"], title="t"), False, DEFAULT_DENY),
    ("args-required-missing", ENG, "github", tool("create_issue", title="t"), False, DEFAULT_DENY),
    ("args-max-length-edge", ENG, "github", tool("create_issue", owner="acme", title="x" * 10), True,
     "eng-github-issues"),
    ("args-max-length-over", ENG, "github", tool("create_issue", owner="acme", title="x" * 11), False, DEFAULT_DENY),
    ("args-min-edge", ENG, "github", tool("create_issue", **ISSUE, priority=1), True, "eng-github-issues"),
    ("args-max-edge", ENG, "github", tool("create_issue", **ISSUE, priority=3.0), True, "eng-github-issues"),
    ("args-below-min", ENG, "github", tool("create_issue", **ISSUE, priority=0), False, DEFAULT_DENY),
    ("args-above-max", ENG, "github", tool("create_issue", **ISSUE, priority=4), False, DEFAULT_DENY),
    ("args-number-as-string", ENG, "github", tool("create_issue", **ISSUE, priority="2"), False, DEFAULT_DENY),
    ("args-bool-is-not-number", ENG, "github", tool("create_issue", **ISSUE, priority=True), False, DEFAULT_DENY),
    # NaN compares false with both bounds, infinities are not JSON: a non-finite number never satisfies min/max
    ("args-nan-not-in-range", ENG, "github", tool("create_issue", **ISSUE, priority=float("nan")), False, DEFAULT_DENY),
    ("args-inf-not-in-range", ENG, "github", tool("create_issue", **ISSUE, priority=float("inf")), False, DEFAULT_DENY),
    ("args-neg-inf-not-in-range", ENG, "github", tool("create_issue", **ISSUE, priority=float("-inf")), False,
     DEFAULT_DENY),
    ("args-pattern-ok", ENG, "github", tool("create_issue", **ISSUE, branch="feature/x-1"), True,
     "eng-github-issues"),
    ("args-pattern-full-match", ENG, "github", tool("create_issue", **ISSUE, branch="feature/x; rm -rf"), False,
     DEFAULT_DENY),
    ("args-pattern-prefix-only", ENG, "github", tool("create_issue", **ISSUE, branch="xfeature/x"), False,
     DEFAULT_DENY),
    # claims: values + regex (AND), JSON pointer into nested claims, list claims
    ("claims-all-hold", TENANT, "jira", tool("create_ticket"), True, "tenant-claim-jira"),
    ("claims-one-fails", who("tim", tenant="acme", email="tim@evil.com"), "jira", tool("create_ticket"), False,
     DEFAULT_DENY),
    ("claims-absent", who("tim", tenant="acme"), "jira", tool("create_ticket"), False, DEFAULT_DENY),
    ("claims-pointer-list", who("kim", realm_access={"roles": ["user", "jira-admin"]}), "jira",
     McpCall("resources/read", id=1, uri="jira://x"), True, "keycloak-role-jira-admin"),
    ("claims-pointer-miss", who("kim", realm_access={"roles": ["user"]}), "jira", tool("x"), False, DEFAULT_DENY),
    # resources and prompts (URI globs stop at '/')
    ("resource-glob", DOCS, "demo", McpCall("resources/read", id=1, uri="file:///srv/docs/a.md"), True,
     "docs-readers"),
    ("resource-glob-no-subdir", DOCS, "demo", McpCall("resources/read", id=1, uri="file:///srv/docs/x/a.md"), False,
     DEFAULT_DENY),
    ("resource-dot-dot", DOCS, "demo", McpCall("resources/read", id=1, uri="file:///srv/docs/../etc/passwd"), False,
     DEFAULT_DENY),
    ("resource-encoded-dot-dot", DOCS, "demo", McpCall("resources/read", id=1, uri="file:///srv/docs/%2E%2E/x"),
     False, DEFAULT_DENY),
    ("resource-encoded-slash-dot-dot", DOCS, "demo",
     McpCall("resources/read", id=1, uri="file:///srv/docs/..%2Fetc"), False, DEFAULT_DENY),
    ("resource-dotfile-is-fine", DOCS, "demo", McpCall("resources/read", id=1, uri="file:///srv/docs/.env"), True,
     "docs-readers"),
    ("resource-without-uri", DOCS, "demo", McpCall("resources/read", id=1), False, DEFAULT_DENY),
    ("prompt-glob", DOCS, "github", McpCall("prompts/get", id=1, prompt="summarise"), True, "docs-readers"),
    ("prompt-not-listed", DOCS, "github", McpCall("prompts/get", id=1, prompt="translate"), False, DEFAULT_DENY),
    ("tools-call-without-name", ALICE, "demo", McpCall("tools/call", id=1), False, DEFAULT_DENY),
    # deny wins over allow
    ("deny-wins-over-user-allow", ALICE, "demo", tool("delete_everything"), False, "no-deletes"),
    ("deny-glob-is-anchored", ENG, "github", tool("list_delete_candidates"), True, "eng-github-read"),
    ("deny-wins-over-claims-allow", TENANT, "jira", tool("delete_ticket"), False, "no-deletes"),
    ("deny-server-wide", BOB_ENG, "github", tool("get_me"), False, "bob-blocked-on-github"),
    ("deny-server-wide-initialize", BOB_ENG, "github", McpCall("initialize", id=1), False, "bob-blocked-on-github"),
    ("deny-other-server-unaffected", BOB_ENG, "demo", McpCall("initialize", id=1), True, "basics"),
    # deny with argument conditions: applies when the value matches, and fails closed on absent/odd arguments
    ("deny-args-match", CONTRACTOR, "github", tool("get_file_contents", repo="secrets"), False,
     "contractors-no-secrets-repo"),
    ("deny-args-no-match", CONTRACTOR, "github", tool("get_file_contents", repo="web"), True, "eng-github-read"),
    ("deny-args-absent-fails-closed", CONTRACTOR, "github", tool("get_me"), False, "contractors-no-secrets-repo"),
    ("deny-args-odd-type-fails-closed", CONTRACTOR, "github", tool("get_me", repo=["secrets"]), False,
     "contractors-no-secrets-repo"),
]  # fmt: skip


@pytest.mark.parametrize(("principal", "server", "call", "allowed", "rule"), [t[1:] for t in TABLE],
                         ids=[t[0] for t in TABLE])  # fmt: skip
def test_decision_table(
    table_policy: CompiledPolicy, principal: Principal, server: str, call: McpCall, allowed: bool, rule: str
) -> None:
    d = decide(table_policy, principal, server, call)
    assert (d.allowed, d.rule) == (allowed, rule), d.reason
    if rule != DEFAULT_DENY:
        assert d.considered[-1] == rule  # considered ends with the deciding rule


def test_decision_names_the_call_but_never_argument_values(table_policy: CompiledPolicy) -> None:
    d = decide(table_policy, ENG, "github", tool("create_issue", owner="evil", title="hunter2-secret"))
    assert "create_issue" in d.reason and "github" in d.reason
    assert "hunter2" not in d.reason and "evil" not in d.reason


def test_considered_lists_deny_rules_first(table_policy: CompiledPolicy) -> None:
    d = decide(table_policy, ENG, "github", tool("create_issue", **ISSUE))
    assert d.considered[:3] == ("no-deletes", "contractors-no-secrets-repo", "bob-blocked-on-github")
    assert "alice-demo-everything" not in d.considered  # other server: never a candidate


def test_deny_wins_regardless_of_file_order(compile_yaml: Callable[..., CompiledPolicy]) -> None:
    policy = compile_yaml("""
        apiVersion: mcp-extproc/v1
        rules:
          - {name: allow-all, effect: allow, subjects: {users: ["*"]}, targets: {servers: ["*"]}}
          - {name: deny-late, effect: deny, subjects: {groups: [g]}, targets: {servers: [demo], tools: [t]}}
    """)
    assert decide(policy, who("u", "g"), "demo", tool("t")).rule == "deny-late"
    assert decide(policy, who("u"), "demo", tool("t")).rule == "allow-all"


def test_empty_policy_denies_everything(compile_yaml: Callable[..., CompiledPolicy]) -> None:
    policy = compile_yaml("apiVersion: mcp-extproc/v1\n")
    d = decide(policy, ALICE, "demo", McpCall("initialize", id=1))
    assert (d.allowed, d.rule, d.considered) == (False, DEFAULT_DENY, ())


def test_evaluation_error_is_a_deny(table_policy: CompiledPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("index corrupted")

    monkeypatch.setattr(type(table_policy), "bucket", boom)
    d = decide(table_policy, ALICE, "demo", tool("anything"))
    assert (d.allowed, d.rule) == (False, DEFAULT_DENY)
    assert "RuntimeError" in d.reason


def test_explain_matches_decide_and_says_why(table_policy: CompiledPolicy) -> None:
    call = tool("create_issue", owner="evil", title="t")
    decision, trace = explain(table_policy, ENG, "github", call)
    assert decision == decide(table_policy, ENG, "github", call)
    why = {t.rule: (t.matched, t.why) for t in trace}
    assert why["eng-github-issues"] == (False, "argument 'owner' is not one of the listed values")
    assert why["no-deletes"] == (False, "tool 'create_issue' is not listed")
    assert why["bob-blocked-on-github"][1].startswith("user 'erin' not in users ['bob']")


# --- batches -------------------------------------------------------------------------------------------------


def test_batch_all_allowed(table_policy: CompiledPolicy) -> None:
    d = decide_batch(table_policy, ENG, "github", [McpCall("ping", id=1), tool("get_me")])
    assert d.allowed and d.rule == "basics,eng-github-read"
    assert [e.allowed for e in d.elements] == [True, True]


def test_batch_one_denied_denies_all(table_policy: CompiledPolicy) -> None:
    calls = [tool("get_me"), tool("delete_repo"), tool("search_issues")]
    d = decide_batch(table_policy, ENG, "github", calls)
    assert (d.allowed, d.rule) == (False, "no-deletes")
    assert d.reason.startswith("batch element 1:")
    assert [e.allowed for e in d.elements] == [True, False, False]


def test_empty_batch_is_denied(table_policy: CompiledPolicy) -> None:
    assert not decide_batch(table_policy, ENG, "github", []).allowed


# --- list filtering ------------------------------------------------------------------------------------------


def test_filter_tools_list(table_policy: CompiledPolicy) -> None:
    result = {
        "tools": [{"name": n} for n in ("get_me", "create_issue", "delete_repo", "search_issues")] + [{"x": 1}],
        "nextCursor": "abc",
    }
    out = filter_list(table_policy, ENG, "github", "tools/list", result)
    # create_issue has argument conditions: listed (some call passes them); delete_repo is denied outright
    assert [t["name"] for t in out["tools"]] == ["get_me", "create_issue"]
    assert out["nextCursor"] == "abc"
    assert len(result["tools"]) == 5  # input untouched


def test_filter_ignores_deny_rules_with_argument_conditions(table_policy: CompiledPolicy) -> None:
    out = filter_list(table_policy, CONTRACTOR, "github", "tools/list", {"tools": [{"name": "get_me"}]})
    assert out["tools"] == [{"name": "get_me"}]  # the deny only refuses calls on repo 'secrets'


def test_filter_resources_and_prompts(table_policy: CompiledPolicy) -> None:
    res = {"resources": [{"uri": "file:///srv/docs/a.md"}, {"uri": "file:///etc/passwd"}]}
    assert filter_list(table_policy, DOCS, "demo", "resources/list", res)["resources"] == [res["resources"][0]]
    prompts = {"prompts": [{"name": "summarize"}, {"name": "translate"}]}
    assert filter_list(table_policy, DOCS, "demo", "prompts/list", prompts)["prompts"] == [{"name": "summarize"}]


def test_filter_passes_other_results_through(table_policy: CompiledPolicy) -> None:
    result = {"content": [{"type": "text", "text": "hi"}]}
    assert filter_list(table_policy, ENG, "github", "tools/call", result) is result
    assert filter_list(table_policy, ENG, "github", "tools/list", {"tools": "odd"}) == {"tools": "odd"}


# --- recordings viewers --------------------------------------------------------------------------------------

VIEWERS = """
apiVersion: mcp-extproc/v1
viewers:
  - {name: own, subjects: {users: ["*"]}, servers: ["*"], sessions: own}
  - {name: sre-github, subjects: {groups: [sre]}, servers: [github], sessions: all}
  - {name: auditor, subjects: {users: [audrey]}, servers: ["*"], sessions: all}
"""


@pytest.mark.parametrize(
    ("principal", "server", "owner", "expected"),
    [
        pytest.param(who("alice"), "github", "alice", True, id="own-session"),
        pytest.param(who("alice"), "github", "bob", False, id="someone-elses"),
        pytest.param(who("sam", "sre"), "github", "bob", True, id="group-all-on-server"),
        pytest.param(who("sam", "sre"), "demo", "bob", False, id="group-other-server"),
        pytest.param(who("audrey"), "jira", "bob", True, id="user-all-servers"),
    ],
)
def test_may_view(
    compile_yaml: Callable[..., CompiledPolicy], principal: Principal, server: str, owner: str, expected: bool
) -> None:
    assert may_view(compile_yaml(VIEWERS), principal, server, owner) is expected


def test_no_viewer_rules_means_no_access(table_policy: CompiledPolicy) -> None:
    assert not may_view(table_policy, ALICE, "demo", "alice")


CLAIMS = """
apiVersion: mcp-extproc/v1
rules:
  - name: verified
    effect: allow
    subjects: {users: ["*"], claims: [{claim: email_verified, values: [true]}, {claim: roles, pattern: "mcp-.*"}]}
    targets: {servers: [demo], methods: [ping]}
"""


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        pytest.param({"email_verified": True, "roles": ["user", "mcp-admin"]}, True, id="bool-and-list-pattern"),
        pytest.param({"email_verified": 1, "roles": ["mcp-admin"]}, False, id="one-is-not-true"),
        pytest.param({"email_verified": "true", "roles": ["mcp-admin"]}, False, id="string-is-not-bool"),
        pytest.param({"email_verified": True, "roles": ["user"]}, False, id="no-element-matches"),
        pytest.param({"email_verified": True, "roles": [{"name": "mcp-admin"}]}, False, id="non-string-element"),
        pytest.param({"roles": ["mcp-admin"]}, False, id="claim-absent"),
    ],
)
def test_claim_values_are_type_exact(
    compile_yaml: Callable[..., CompiledPolicy], claims: dict[str, Any], expected: bool
) -> None:
    assert decide(compile_yaml(CLAIMS), who("u", **claims), "demo", McpCall("ping", id=1)).allowed is expected


# --- argument names a case-insensitive server reads as another name ------------------------------------------------

FOLDING_POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: echo
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo, query]}
    arguments:
      text: {max_length: 8, optional: true}
      sql: {pattern: "select .*", optional: true}
  - name: no-secrets
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [echo]}
    arguments: {text: {pattern: ".*secret.*"}}
  - name: anything-else
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [free]}
"""


@pytest.mark.parametrize(
    ("tool_name", "arguments", "why"),
    [
        pytest.param("echo", {"Text": "my secret"}, "different spelling of 'text'", id="deny-rule-skipped-by-case"),
        pytest.param("echo", {"TEXT": "x" * 1000}, "different spelling of 'text'", id="max-length-skipped-by-case"),
        pytest.param("query", {"\u017fql": "drop table t"}, "different spelling of 'sql'", id="long-s-folds-to-s"),
        pytest.param("echo", {"text": "a", "Text": "b"}, "same name", id="two-spellings-of-a-constrained-name"),
        pytest.param("free", {"path": "a", "Path": "b"}, "same name", id="two-spellings-of-any-name"),
    ],
)
def test_ambiguous_argument_names_are_invalid(
    compile_yaml: Callable[..., CompiledPolicy], tool_name: str, arguments: dict, why: str
) -> None:
    policy = compile_yaml(FOLDING_POLICY)
    call = tool(tool_name, **arguments)

    decision = decide(policy, NOBODY, "demo", call)
    explained, _ = explain(policy, NOBODY, "demo", call)
    batch = decide_batch(policy, NOBODY, "demo", [tool("free"), call])

    assert (decision.allowed, decision.invalid, decision.rule) == (False, True, DEFAULT_DENY)
    assert why in decision.reason
    assert explained == decision
    assert (batch.allowed, batch.invalid) == (False, True)


@pytest.mark.parametrize(
    ("tool_name", "arguments"),
    [
        pytest.param("echo", {"text": "hi"}, id="exact-spelling"),
        pytest.param("free", {"Text": "unconstrained here"}, id="constrained-elsewhere-only"),
        pytest.param("echo", {"text": "hi", "textColor": "red", "Mode": 1}, id="other-names-any-case"),
    ],
)
def test_distinct_argument_names_are_decided_normally(
    compile_yaml: Callable[..., CompiledPolicy], tool_name: str, arguments: dict
) -> None:
    decision = decide(compile_yaml(FOLDING_POLICY), NOBODY, "demo", tool(tool_name, **arguments))

    assert decision.allowed and not decision.invalid


# --- non-finite numbers (the JSON parsers refuse them; the engine does not trust that) ----------------------------

NON_FINITE_POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: slow-ok
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [sleep]}
    arguments: {delay: {min: 0, max: 1}}
  - name: no-huge-pages
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [sleep]}
    arguments: {pages: {min: 100, optional: true}}
  - name: no-level-3
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [demo], tools: [sleep]}
    arguments: {level: {values: [3], optional: true}}
"""


@pytest.mark.parametrize("number", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize(
    ("arguments", "rule"),
    [
        pytest.param({"delay": "N"}, DEFAULT_DENY, id="allow-range-does-not-hold"),
        pytest.param({"delay": 0.5, "pages": "N"}, "no-huge-pages", id="deny-range-applies"),
        pytest.param({"delay": 0.5, "level": "N"}, "no-level-3", id="deny-values-applies"),
    ],
)
def test_non_finite_numbers_fail_closed(
    compile_yaml: Callable[..., CompiledPolicy], number: float, arguments: dict, rule: str
) -> None:
    policy = compile_yaml(NON_FINITE_POLICY)
    call = tool("sleep", **{k: number if v == "N" else v for k, v in arguments.items()})

    decision = decide(policy, NOBODY, "demo", call)
    explained, _ = explain(policy, NOBODY, "demo", call)

    assert (decision.allowed, decision.rule) == (False, rule)
    assert explained == decision
    assert decide(policy, NOBODY, "demo", tool("sleep", delay=0.5)).allowed


def test_finite_numbers_still_match_values(compile_yaml: Callable[..., CompiledPolicy]) -> None:
    policy = compile_yaml(NON_FINITE_POLICY)
    assert decide(policy, NOBODY, "demo", tool("sleep", delay=0.5, level=3.0)).rule == "no-level-3"
    assert decide(policy, NOBODY, "demo", tool("sleep", delay=1, level=2)).rule == "slow-ok"


APPROVE = """
apiVersion: mcp-extproc/v1
rules:
  - name: everyone
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: ["*"]}
  - name: deletes-need-sre
    effect: approve
    subjects: {users: ["*"]}
    targets: {servers: [github], tools: ["delete_*"]}
    arguments: {force: {values: [true]}}
    approvers: {groups: [sre]}
    ttl: 15m
    count: 2
  - name: nobody-drops
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: [github], tools: [delete_db]}
"""


def test_approve_holds_after_deny_and_before_allow(compile_yaml: Callable[..., CompiledPolicy]) -> None:
    policy = compile_yaml(APPROVE)
    held = decide(policy, who("alice"), "github", tool("delete_repo", force=True))
    assert not held.allowed and held.rule == "deletes-need-sre" and held.approval is not None
    assert (held.approval.ttl, held.approval.count, held.approval.text) == (900.0, 2, "groups ['sre']")
    assert "approves it" in held.reason and held.considered == ("nobody-drops", "deletes-need-sre")[1:]
    denied = decide(policy, who("alice"), "github", tool("delete_db", force=True))
    assert denied.rule == "nobody-drops" and denied.approval is None  # deny wins over approve
    # approve rules fail closed like deny: an absent or odd argument cannot prove the call needs no approval
    assert decide(policy, who("alice"), "github", tool("delete_repo")).approval is not None
    assert decide(policy, who("alice"), "github", tool("delete_repo", force=[True])).approval is not None
    assert decide(policy, who("alice"), "github", tool("delete_repo", force=False)).allowed
    listed = filter_list(policy, who("alice"), "github", "tools/list", {"tools": [{"name": "delete_repo"}]})
    assert listed["tools"] == [{"name": "delete_repo"}]  # a held tool stays listed: the caller may ask for it
    _, trace = explain(policy, who("alice"), "github", tool("delete_repo", force=True))
    assert [(t.rule, t.effect, t.matched) for t in trace][:1] == [("deletes-need-sre", "approve", True)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        pytest.param("approvers: {groups: [sre]}", "needs approvers", id="approve-without-ttl"),
        pytest.param("ttl: 15m", "needs approvers", id="approve-without-approvers"),
        pytest.param("approvers: {groups: [sre]}\n    ttl: 8d", "at most 7 days", id="ttl-too-long"),
        pytest.param("approvers: {groups: [sre]}\n    ttl: soon", "ttl 'soon'", id="ttl-not-a-duration"),
    ],
)
def test_approve_rules_are_checked_at_load(
    compile_yaml: Callable[..., CompiledPolicy], extra: str, message: str
) -> None:
    from extproc.errors import ConfigError

    text = f"""
apiVersion: mcp-extproc/v1
rules:
  - name: held
    effect: approve
    subjects: {{users: ["*"]}}
    targets: {{servers: [github], tools: [x]}}
    {extra}
"""
    with pytest.raises(ConfigError, match=message):
        compile_yaml(text)


def test_approval_fields_only_on_approve_and_tools_call(compile_yaml: Callable[..., CompiledPolicy]) -> None:
    from extproc.errors import ConfigError

    base = 'apiVersion: mcp-extproc/v1\nrules:\n  - name: r\n    effect: {e}\n    subjects: {{users: ["*"]}}\n'
    with pytest.raises(ConfigError, match="only for effect: approve"):
        compile_yaml(base.format(e="allow") + "    targets: {servers: [github], tools: [x]}\n    ttl: 1m\n")
    with pytest.raises(ConfigError, match="tools/call only"):
        compile_yaml(
            base.format(e="approve")
            + "    targets: {servers: [github], resources: ['file:///*']}\n    approvers: {users: [b]}\n    ttl: 1m\n"
        )
