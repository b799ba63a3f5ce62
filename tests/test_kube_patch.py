"""Node label/annotation merge patches and Events against the real apiserver."""

from __future__ import annotations

import pytest

from serfbridge import bridge, kube
from serfbridge.errors import KubeNotFound, KubeUnavailable
from serfbridge.plan_labels import NodePatch
from serfbridge.plan_owned import metadata_delta
from tests.fixtures_kube import KubeObjects, wait_until

pytestmark = pytest.mark.integration


def patches(client: kube.KubeClient) -> int:
    return client.request_counts().get("patch nodes", 0)


def test_patch_touches_only_the_keys_given(kube_admin, kube_objects):
    node = KubeObjects.name("node")
    kube_objects.create_node(node, labels={"hand/set": "x", "p/old": "1", "p/gone": "1"})
    before = patches(kube_admin)
    kube_admin.patch_node(
        node,
        labels={"p/new": "n", "p/old": "2", "p/gone": None},
        annotations={"p/serf-member": "m1"},
    )
    assert patches(kube_admin) == before + 1
    after = kube_admin.get_node(node)
    assert after.labels == {"hand/set": "x", "p/old": "2", "p/new": "n"}
    assert after.annotations == {"p/serf-member": "m1"}


def test_patch_that_changes_nothing_is_not_sent(kube_admin, kube_objects):
    """The delta is the planner's (``metadata_delta``); an empty one sends no request."""
    node = KubeObjects.name("node")
    kube_objects.create_node(node, labels={"p/a": "1"}, annotations={"p/b": "2"})
    before = patches(kube_admin)
    current = kube_admin.get_node(node)
    kube_admin.patch_node(
        node,
        labels=metadata_delta(current.labels, {"p/a": "1", "p/absent": None}),
        annotations=metadata_delta(current.annotations, {"p/b": "2"}),
    )
    kube_admin.patch_node(node)
    assert patches(kube_admin) == before


def test_one_label_change_is_one_patch_with_a_synced_cache(kube_admin, kube_objects, start_cache):
    """The applier sends the plan's patch and nothing else (no GET), and writes it through
    into the cache, so a plan made right after it from the cache sends nothing more."""
    node = KubeObjects.name("node")
    kube_objects.create_node(node)
    cache = start_cache(kube_admin)
    assert cache.wait_synced(10)
    wait_until(lambda: cache.nodes().get(node) is not None)
    before = kube_admin.request_counts()
    patch = NodePatch(node, {"p/x": "1"}, {}, "test")
    assert bridge.apply_node_patches(kube_admin, [patch], cache=cache) == 1
    after = kube_admin.request_counts()
    assert {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)} == {
        "patch nodes": 1
    }
    again = metadata_delta(bridge.read_kube(cache).nodes[node].labels, {"p/x": "1"})
    kube_admin.patch_node(node, labels=again)
    wait_until(lambda: cache.nodes().get(node).labels == {"p/x": "1"})
    assert kube_admin.request_counts() == after


def test_patching_a_missing_node_is_not_found(kube_admin):
    with pytest.raises(KubeNotFound, match="nodes") as caught:
        kube_admin.patch_node("no-such-node", labels={"a": "b"})
    assert caught.value.__cause__ is not None


def test_events_on_a_service_and_a_node(kube_admin, kube_objects, start_cache):
    svc, node = KubeObjects.name("svc"), KubeObjects.name("node")
    kube_objects.create_service(svc)
    kube_objects.create_node(node)
    cache = start_cache(kube_admin)
    wait_until(lambda: cache.services().get(f"default/{svc}") and cache.nodes().get(node))
    kube_admin.create_event(
        cache.services()[f"default/{svc}"],
        reason="NotPublished",
        message="not published: budget exceeded",
    )
    kube_admin.create_event(cache.nodes()[node], reason="SerfFailed", message="m", type="Normal")
    events = kube_admin.request(
        "GET", "/api/v1/namespaces/default/events", verb="list", resource="events"
    )["items"]
    mine = {
        e["involvedObject"]["name"]: e for e in events if e["source"]["component"] == "serfbridge"
    }
    assert mine[svc]["message"] == "not published: budget exceeded"
    assert mine[svc]["type"] == "Warning"
    assert mine[svc]["involvedObject"]["kind"] == "Service"
    assert mine[svc]["reportingComponent"] == "serfbridge"
    assert mine[node]["involvedObject"]["kind"] == "Node"
    assert mine[node]["type"] == "Normal"


def test_unreachable_apiserver_is_unavailable(tmp_path):
    config = tmp_path / "kubeconfig"
    config.write_text(
        '{"apiVersion": "v1", "kind": "Config", "current-context": "c",'
        ' "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:1"}}],'
        ' "users": [{"name": "u", "user": {"token": "t"}}],'
        ' "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}'
    )
    client = kube.load_client(str(config), env={})
    with pytest.raises(KubeUnavailable) as caught:
        client.get_node("x")
    assert caught.value.temporary and caught.value.__cause__ is not None
