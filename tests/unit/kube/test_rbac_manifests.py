"""deploy/k8s/rbac: the gateway gets exactly what the code calls; the MCP-user roles name what policies check."""

from __future__ import annotations

from pathlib import Path

import yaml

from extproc.policy.compiled import KubeCheck

RBAC = Path(__file__).resolve().parents[3] / "deploy" / "k8s" / "rbac"


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((RBAC / name).read_text()) if d]


def test_gateway_role_is_least_privilege() -> None:
    role, binding = _docs("gateway-clusterrole.yaml")
    rules = {
        (g, r): sorted(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
    }
    assert rules == {
        ("authorization.k8s.io", "subjectaccessreviews"): ["create"],
        ("", "services"): ["list", "watch"],
        ("discovery.k8s.io", "endpointslices"): ["list", "watch"],
    }
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mcp-extproc", "namespace": "mcp-extproc"}]


def test_user_roles_grant_the_check_a_policy_rule_makes() -> None:
    check = KubeCheck("use", "mcp-extproc.io", "mcpservers", "tickets", "team-a")
    (role,) = _docs("team-a-role.yaml")
    (rule,) = role["rules"]
    assert role["metadata"]["namespace"] == check.namespace
    assert (rule["apiGroups"], rule["resources"], rule["verbs"], rule["resourceNames"]) == (
        [check.group],
        [check.resource],
        [check.verb],
        [check.name],
    )
    (binding,) = _docs("team-a-rolebinding.yaml")
    assert binding["roleRef"]["name"] == role["metadata"]["name"] and binding["subjects"][0]["name"] == "oidc:team-a"
    (cluster_role,) = _docs("mcpserver-user-clusterrole.yaml")
    assert cluster_role["rules"] == [{"apiGroups": ["mcp-extproc.io"], "resources": ["mcpservers"], "verbs": ["use"]}]
