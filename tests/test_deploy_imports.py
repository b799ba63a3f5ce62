"""deploy/imports/rbac.yaml: a Role in the import namespace with exactly the verbs the
imports' writes use, bound to the ServiceAccount deploy/rbac.yaml defines."""

from __future__ import annotations

from pathlib import Path

import yaml

from serfbridge import defaults
from tests.test_deploy_manifests import grants

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_imports_get_a_role_not_a_cluster_role() -> None:
    docs = documents(DEPLOY / "imports" / "rbac.yaml")
    assert {d["kind"] for d in docs} == {"Namespace", "Role", "RoleBinding"}
    [role] = [d for d in docs if d["kind"] == "Role"]
    assert role["metadata"]["namespace"] == defaults.IMPORT_NAMESPACE
    assert grants(role) == {
        *(("", "services", v) for v in ("create", "update", "delete")),
        *(("discovery.k8s.io", "endpointslices", v) for v in ("create", "update", "delete")),
    }


def test_the_binding_names_the_bridges_service_account() -> None:
    [account] = [d for d in documents(DEPLOY / "rbac.yaml") if d["kind"] == "ServiceAccount"]
    [binding] = [
        d for d in documents(DEPLOY / "imports" / "rbac.yaml") if d["kind"] == "RoleBinding"
    ]
    assert binding["metadata"]["namespace"] == defaults.IMPORT_NAMESPACE
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "serfbridge-imports",
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]


def test_the_cluster_role_already_lists_and_watches_what_imports_compare() -> None:
    [role] = [d for d in documents(DEPLOY / "rbac.yaml") if d["kind"] == "ClusterRole"]
    reads = {
        (g, r)
        for rule in role["rules"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
        if {"list", "watch"} <= set(rule["verbs"])
    }
    assert {("", "services"), ("discovery.k8s.io", "endpointslices")} <= reads
