"""deploy/rbac.yaml is the least that works: in RBAC mode the serfbridge ServiceAccount
runs every adapter operation and is refused anything else, as KubeForbidden."""

from __future__ import annotations

from pathlib import Path

import pytest

from serfbridge.errors import KubeForbidden
from tests.fixtures_kube import KubeObjects, client_for, wait_until
from tests.lab.apiserver import SERVICE_ACCOUNT_USER

pytestmark = pytest.mark.integration
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


@pytest.fixture(scope="module")
def rbac_lab(rbac_apiserver):
    applied = rbac_apiserver.kubectl("apply", "-f", str(DEPLOY / "rbac.yaml"))
    assert applied.returncode == 0, applied.stderr
    return rbac_apiserver


@pytest.fixture
def bridge(rbac_lab):
    user = next(u for u in rbac_lab.users if u.name == SERVICE_ACCOUNT_USER)
    client = client_for(rbac_lab, user)
    yield client
    client.close()


@pytest.fixture
def admin_objects(rbac_lab):
    objects = KubeObjects(client_for(rbac_lab))
    yield objects
    objects.cleanup()


def test_kubectl_apply_dry_run_server_of_deploy(kube_apiserver):
    done = kube_apiserver.kubectl("apply", "--dry-run=server", "-f", str(DEPLOY))
    assert done.returncode == 0, done.stderr
    assert "serviceaccount/serfbridge created (server dry run)" in done.stdout


def test_service_account_runs_every_adapter_operation(bridge, admin_objects, start_cache):
    node, svc = KubeObjects.name("node"), KubeObjects.name("svc")
    admin_objects.create_node(node, labels={"hand": "set"})
    admin_objects.create_service(svc)
    admin_objects.create_slice(f"{svc}-1", svc, node)
    cache = start_cache(bridge)
    assert cache.wait_synced(15), "the ServiceAccount could not list+watch all three kinds"
    wait_until(
        lambda: (
            cache.nodes().get(node)
            and cache.services().get(f"default/{svc}")
            and f"default/{svc}-1" in cache.endpoint_slices()
        )
    )
    bridge.patch_node(node, labels={"p/serf-status": "alive"}, annotations={"p/serf-member": "m"})
    assert bridge.get_node(node).labels["p/serf-status"] == "alive"  # get: an operation too
    bridge.patch_node(node, labels={"p/serf-status": None})
    wait_until(lambda: cache.nodes().get(node).labels == {"hand": "set"})
    bridge.create_event(cache.services().get(f"default/{svc}"), reason="NotPublished", message="m")
    bridge.create_event(cache.nodes().get(node), reason="Test", message="m")
    assert cache.synced


@pytest.mark.parametrize(
    ("method", "path", "verb", "resource", "namespace", "body"),
    [
        pytest.param(
            "PATCH",
            "/api/v1/namespaces/default/services/{svc}",
            "patch",
            "services",
            "default",
            {"metadata": {"labels": {"x": "y"}}},
            id="patch-service",
        ),
        pytest.param(
            "DELETE", "/api/v1/nodes/{node}", "delete", "nodes", None, None, id="delete-node"
        ),
    ],
)
def test_service_account_is_refused_the_rest(
    bridge, admin_objects, method, path, verb, resource, namespace, body
):
    node, svc = KubeObjects.name("node"), KubeObjects.name("svc")
    admin_objects.create_node(node)
    admin_objects.create_service(svc)
    with pytest.raises(KubeForbidden) as caught:
        bridge.request(
            method,
            path.format(svc=svc, node=node),
            verb=verb,
            resource=resource,
            namespace=namespace,
            body=body,
            content_type="application/merge-patch+json",
        )
    message = str(caught.value)
    assert message.startswith(f"forbidden: {verb} {resource}")
    if namespace:
        assert f"in namespace {namespace}" in message
    assert caught.value.__cause__ is not None
    assert admin_objects.client.get_node(node).name == node  # still there


def test_a_user_without_bindings_cannot_sync(rbac_lab, start_cache):
    nobody = next(u for u in rbac_lab.users if u.name == "nobody")
    client = client_for(rbac_lab, nobody)
    with pytest.raises(KubeForbidden, match="forbidden: list nodes"):
        client.request("GET", "/api/v1/nodes", verb="list", resource="nodes")
    cache = start_cache(client)
    assert not cache.wait_synced(1.5)
    client.close()
