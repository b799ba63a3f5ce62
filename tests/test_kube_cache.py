"""KubeCache against the real apiserver: follows changes, survives a dropped watch, a 410
after compaction and a 15 s outage without losing, repeating or inventing changes."""

from __future__ import annotations

import logging
import time

import pytest

from serfbridge import kube
from tests.fixtures_kube import ChangeLog, KubeObjects, client_for, wait_until

pytestmark = pytest.mark.integration


def fresh_nodes(client: kube.KubeClient) -> dict[str, kube.NodeInfo]:
    reply = client.request("GET", "/api/v1/nodes", verb="list", resource="nodes")
    return {item["metadata"]["name"]: kube.parse_node(item) for item in reply["items"]}


def fresh_services(client: kube.KubeClient) -> dict[str, kube.ServiceInfo]:
    reply = client.request("GET", "/api/v1/services", verb="list", resource="services")
    return {
        f"{i['metadata']['namespace']}/{i['metadata']['name']}": kube.parse_service(i)
        for i in reply["items"]
    }


def test_cache_follows_creates_updates_and_deletes(kube_admin, kube_objects, start_cache):
    log = ChangeLog()
    cache = start_cache(kube_admin, on_change=log)
    assert cache.wait_synced(10)
    node, svc = KubeObjects.name("node"), KubeObjects.name("svc")
    version = cache.version

    kube_objects.create_node(node, labels={"zone": "a"})
    kube_objects.create_service(svc, annotations={"serfbridge.io/publish": "true"})
    kube_objects.create_slice(f"{svc}-1", svc, node)
    wait_until(
        lambda: (
            cache.nodes().get(node)
            and cache.services().get(f"default/{svc}")
            and f"default/{svc}-1" in cache.endpoint_slices()
        ),
        what="creates",
    )
    slice_ = cache.endpoint_slices()[f"default/{svc}-1"]
    assert (slice_.service_name, slice_.endpoints[0].node_name) == (svc, node)
    assert slice_.endpoints[0].ready
    assert cache.nodes().get(node).ready and cache.nodes().get(node).labels == {"zone": "a"}
    assert cache.services().get(f"default/{svc}").ports[0].node_port
    assert cache.version > version

    kube_objects.label_node(node, {"zone": "b"})
    kube_objects.patch(
        f"/api/v1/namespaces/default/services/{svc}",
        "services",
        {"metadata": {"annotations": {"serfbridge.io/type": "Docker"}}},
    )
    wait_until(lambda: cache.nodes().get(node).labels == {"zone": "b"}, what="node update")
    wait_until(lambda: "serfbridge.io/type" in cache.services().get(f"default/{svc}").annotations)

    kube_objects.delete(f"/api/v1/nodes/{node}")
    kube_objects.delete(f"/api/v1/namespaces/default/services/{svc}")
    wait_until(
        lambda: cache.nodes().get(node) is None and cache.services().get(f"default/{svc}") is None
    )
    assert log.for_key("nodes", node) == ["added", "modified", "deleted"]
    assert log.for_key("services", f"default/{svc}") == ["added", "modified", "deleted"]
    assert cache.synced


def test_update_made_while_the_watch_is_down_is_picked_up(kube_admin, kube_objects, start_cache):
    """The server ends the watch (timeoutSeconds) while the watcher thread is held by a slow
    consumer; changes made with no watch open arrive once the cache watches again."""
    log = ChangeLog()
    gate, node = KubeObjects.name("gate"), KubeObjects.name("node")
    kube_objects.create_node(node, labels={"v": "1"})
    log.hold_on = lambda change: change.key == gate
    cache = start_cache(kube_admin, on_change=log, watch_timeout=2)
    assert cache.wait_synced(10)
    try:
        kube_objects.create_node(gate)
        assert log.held.wait(10)
        time.sleep(3)  # the server has closed that watch by now
        kube_objects.label_node(node, {"v": "2"})
    finally:
        log.release.set()
    wait_until(lambda: cache.nodes().get(node).labels == {"v": "2"}, what="missed update")
    assert log.for_key("nodes", node) == ["added", "modified"]
    assert not log.deletions()


def test_relist_after_compaction_410_loses_and_repeats_nothing(
    nowatch_apiserver, start_cache, caplog
):
    caplog.set_level(logging.WARNING, logger="serfbridge.kube")
    admin = client_for(nowatch_apiserver)
    objects = KubeObjects(admin)
    gate, keep, change, drop = (KubeObjects.name(p) for p in ("gate", "keep", "chg", "drop"))
    for name in (keep, change, drop):
        objects.create_node(name, labels={"v": "1"})
    log = ChangeLog()
    log.hold_on = lambda c: c.key == gate
    cache = start_cache(client_for(nowatch_apiserver), on_change=log, watch_timeout=2)
    assert cache.wait_synced(10)
    lists_before = cache.client.request_counts()["list nodes"]
    try:
        objects.create_node(gate)
        assert log.held.wait(10)
        time.sleep(3)  # the node watch has ended; nothing watches nodes now
        added = KubeObjects.name("new")
        objects.create_node(added)
        objects.label_node(change, {"v": "2"})
        objects.delete(f"/api/v1/nodes/{drop}")
        objects.create_service(KubeObjects.name("svc"))  # moves etcd past the node writes
        nowatch_apiserver.compact_etcd()
    finally:
        log.release.set()
    wait_until(
        lambda: (
            cache.synced
            and cache.client.request_counts()["list nodes"] > lists_before
            and cache.nodes().get(added) is not None
        ),
        what="relist after 410",
    )
    assert any("expired" in r.getMessage() for r in caplog.records), "no 410 seen"
    assert cache.nodes() == fresh_nodes(admin)
    assert cache.services() == fresh_services(admin)
    assert log.for_key("nodes", added) == ["added"]
    assert log.for_key("nodes", change) == ["added", "modified"]  # added: the first list
    assert log.for_key("nodes", drop) == ["added", "deleted"]
    assert log.for_key("nodes", keep) == ["added"]
    objects.cleanup()


def test_outage_of_15s_reconnects_and_never_reports_mass_deletion(private_apiserver, start_cache):
    admin = client_for(private_apiserver)
    objects = KubeObjects(admin)
    names = [KubeObjects.name("node") for _ in range(3)]
    for name in names:
        objects.create_node(name)
    log = ChangeLog()
    cache = start_cache(client_for(private_apiserver), on_change=log)
    assert cache.wait_synced(10)
    before = cache.nodes()

    private_apiserver.stop_apiserver()
    wait_until(lambda: not cache.synced, timeout=10, what="not-synced during the outage")
    start = time.monotonic()
    while time.monotonic() - start < 15:
        assert not cache.synced
        assert cache.nodes() == before  # stale but whole: never emptied
        time.sleep(0.5)
    private_apiserver.start_apiserver()
    objects.label_node(names[0], {"after": "outage"})

    assert cache.wait_synced(30), "cache did not reconnect by itself"
    wait_until(lambda: cache.nodes().get(names[0]).labels == {"after": "outage"})
    assert not log.deletions()
    assert set(cache.nodes()) == set(before)
    assert cache.nodes() == fresh_nodes(admin)
