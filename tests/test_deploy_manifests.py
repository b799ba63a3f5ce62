"""The manifests in deploy/ agree with each other and with what the RBAC test proved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.lab.apiserver import serfbridge_service_account

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def documents() -> list[dict]:
    return [
        d for f in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]


def test_daemonset_runs_as_the_service_account_the_rbac_test_proved_sufficient() -> None:
    docs = documents()
    [account] = [d for d in docs if d["kind"] == "ServiceAccount"]
    [daemonset] = [d for d in docs if d["kind"] == "DaemonSet"]
    namespace, name = account["metadata"]["namespace"], account["metadata"]["name"]
    assert daemonset["metadata"]["namespace"] == namespace
    assert daemonset["spec"]["template"]["spec"]["serviceAccountName"] == name
    # tests/test_kube_rbac.py authenticates as exactly this identity.
    assert serfbridge_service_account().name == f"system:serviceaccount:{namespace}:{name}"
    [binding] = [d for d in docs if d["kind"] == "ClusterRoleBinding"]
    assert {"kind": "ServiceAccount", "name": name, "namespace": namespace} in binding["subjects"]


def test_cluster_role_grants_exactly_what_the_bridge_uses() -> None:
    [role] = [d for d in documents() if d["kind"] == "ClusterRole"]
    assert grants(role) == {
        *(("", "nodes", v) for v in ("get", "list", "watch", "patch")),
        *(("", "services", v) for v in ("get", "list", "watch")),
        *(("discovery.k8s.io", "endpointslices", v) for v in ("get", "list", "watch")),
        ("", "events", "create"),
    }


def grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """Every (API group, resource, verb) a Role or ClusterRole grants."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
