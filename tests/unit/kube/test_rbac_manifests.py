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


AWS = RBAC.parents[1] / "aws"


def test_recordings_iam_policy_puts_under_the_prefix_and_never_deletes() -> None:
    import json

    from extproc.recording.config import S3

    policy = json.loads((AWS / "recordings-iam-policy.json").read_text())
    s3 = [s for s in policy["Statement"] if any(a.startswith("s3:") for a in s["Action"])]
    assert [sorted(s["Action"]) for s in s3] == [["s3:PutObject", "s3:PutObjectRetention"]]
    assert s3[0]["Resource"] == f"arn:aws:s3:::RECORDINGS_BUCKET/{S3(bucket='b-b-b').prefix}/*"  # the default prefix
    actions = [a for s in policy["Statement"] for a in s["Action"]]
    assert not any("Delete" in a or "*" in a or a.startswith(("s3:Get", "s3:List")) for a in actions)
    trust = json.loads((AWS / "recordings-trust-policy.json").read_text())
    (cond,) = [s["Condition"]["StringEquals"] for s in trust["Statement"]]
    assert "system:serviceaccount:mcp-extproc:mcp-extproc" in cond.values()


def test_irsa_service_account_and_network_policy_match_the_gateway() -> None:
    (sa,) = _docs("serviceaccount-irsa.yaml")
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/mcp-extproc-recordings")
    deployment = yaml.safe_load((RBAC.parent / "base" / "deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    (netpol,) = _docs("networkpolicy-mcp-servers.yaml")
    (rule,) = netpol["spec"]["ingress"]
    (peer,) = rule["from"]
    assert netpol["spec"]["policyTypes"] == ["Ingress"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": sa["metadata"]["namespace"]}
    assert peer["podSelector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
