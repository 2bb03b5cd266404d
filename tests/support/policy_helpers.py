"""Helpers shared by the policy tests (a uniquely named module, so `import` cannot pick another conftest)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from extproc.authn.principal import Principal

SERVERS = {"demo", "github", "jira"}

# A policy written for the decision table: every subject kind, server, method, object kind and argument kind.
TABLE_POLICY = """
apiVersion: mcp-extproc/v1
rules:
  - name: basics
    effect: allow
    subjects: {users: ["*"]}
    targets: {servers: ["*"], methods: [initialize, ping, "notifications/*", tools/list]}
  - name: alice-demo-everything
    effect: allow
    subjects: {users: [alice]}
    targets: {servers: [demo], methods: ["*"]}
  - name: eng-github-read
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: [github], tools: ["get_*", "list_*", search_code]}
  - name: eng-github-issues
    effect: allow
    subjects: {groups: [eng]}
    targets: {servers: [github], tools: [create_issue]}
    arguments:
      owner: {values: [acme, acme-labs]}
      title: {max_length: 10}
      priority: {min: 1, max: 3, optional: true}
      branch: {pattern: "feature/[a-z0-9-]+", optional: true}
  - name: tenant-claim-jira
    effect: allow
    subjects: {claims: [{claim: tenant, values: [acme]}, {claim: email, pattern: ".*@acme\\\\.com"}]}
    targets: {servers: [jira], tools: ["*"]}
  - name: keycloak-role-jira-admin
    effect: allow
    subjects: {claims: [{claim: /realm_access/roles, values: [jira-admin]}]}
    targets: {servers: [jira], methods: ["tools/*", "resources/*"]}
  - name: docs-readers
    effect: allow
    subjects: {groups: [docs]}
    targets: {servers: ["*"], resources: ["file:///srv/docs/*"], prompts: ["summari[sz]e"]}
  - name: no-deletes
    effect: deny
    subjects: {users: ["*"]}
    targets: {servers: ["*"], tools: ["delete_*"]}
  - name: contractors-no-secrets-repo
    effect: deny
    subjects: {groups: [contractors]}
    targets: {servers: [github], tools: ["*"]}
    arguments:
      repo: {values: [secrets]}
  - name: bob-blocked-on-github
    effect: deny
    subjects: {users: [bob]}
    targets: {servers: [github]}
"""


def write(directory: Path, name: str, text: str) -> Path:
    """Write dedented YAML into ``directory/name``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def who(user: str = "alice", *groups: str, **claims: object) -> Principal:
    """A principal whose subject is its username."""
    return Principal(issuer="https://idp.test", subject=user, username=user, groups=groups, claims=dict(claims))
