"""The imports applier against the real apiserver: plan -> apply -> the objects exist with
the planned bodies -> a second pass writes nothing -> prune leaves nothing; and in RBAC mode,
deploy/imports/rbac.yaml is exactly enough."""

from __future__ import annotations

from pathlib import Path

import pytest

from serfbridge import bridge, cloudy
from serfbridge.config import Settings
from serfbridge.errors import KubeForbidden
from serfbridge.import_names import dns1035
from serfbridge.kube import KubeClient
from serfbridge.kube_writes import KubeObjects as Writes
from serfbridge.rpc.models import Member
from tests.fixtures_kube import KubeObjects, client_for, wait_until
from tests.lab.apiserver import SERVICE_ACCOUNT_USER

pytestmark = pytest.mark.integration
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
P = "serfbridge.io"
WRITES = ("create", "update", "delete")


def publisher(name: str, *entries: tuple[str, str, str], status: str = "alive") -> Member:
    listed = [
        cloudy.Entry(t, f"{t}_{ip}", f"{name}.guifi.local", ip, p, "mc") for t, ip, p in entries
    ]
    return Member(name, entries[0][1], 7946, {"services": cloudy.encode_services(listed)}, status)


def serf_view(node: str, *publishers: Member) -> bridge.SerfView:
    me = Member("serf-me", "10.9.9.9", 7946, {"k8s": f"lab/{node}"}, "alive")
    return bridge.SerfView((me, *publishers), "serf-me", {})


def record(node: str) -> dict[str, str]:
    """What a node's own bridge records on it: it makes the bridge a writer candidate."""
    return {f"{P}/serf-member": "serf-me", f"{P}/serf-recorded-by": node}


def writes_sent(client: KubeClient) -> int:
    counts = client.request_counts()
    return sum(n for key, n in counts.items() if key.split()[0] in WRITES)


def make_namespace(client: KubeClient, name: str) -> None:
    body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
    client.request("POST", "/api/v1/namespaces", verb="create", resource="namespaces", body=body)


def get(client: KubeClient, path: str, resource: str) -> dict:
    return client.request("GET", path, verb="get", resource=resource)


def in_namespace(client: KubeClient, namespace: str, version: str) -> dict[str, set[str]]:
    services = get(client, f"/api/v1/namespaces/{namespace}/services", "services")
    slices = get(
        client,
        f"/apis/discovery.k8s.io/{version}/namespaces/{namespace}/endpointslices",
        "endpointslices",
    )
    return {
        "services": {s["metadata"]["name"] for s in services.get("items") or ()},
        "slices": {s["metadata"]["name"] for s in slices.get("items") or ()},
    }


PUBS = (
    publisher("a", ("syncthing", "192.0.2.10", "8384"), ("Docker", "192.0.2.10", "2375")),
    publisher("b", ("syncthing", "192.0.2.11", "8384"), ("userapp", "192.0.2.11", "80")),
)


def run_lifecycle(client: KubeClient, cache, *, node: str, namespace: str) -> None:
    """The applier's whole life in one namespace, with ``client``'s own rights."""
    s = Settings(node_name=node, cluster="lab", import_services=True, import_namespace=namespace)
    version = bridge.read_kube(cache).slice_version
    assert version in ("v1", "v1beta1")
    objects = Writes(client, slice_version=version)

    def run(view: bridge.SerfView) -> int:
        return bridge.import_pass(
            view, bridge.read_kube(cache), kube=objects, settings=s, cache=cache
        )[1]

    def slice_body() -> dict:
        path = f"/apis/discovery.k8s.io/{version}/namespaces/{namespace}/endpointslices"
        return get(client, f"{path}/syncthing-p8384", "endpointslices")

    before = writes_sent(client)
    assert run(serf_view(node, *PUBS)) == 4 == writes_sent(client) - before
    check_created(client, namespace=namespace, slice=slice_body())
    # Steady state: a pass right after (the cache written through) and one after the
    # watch events have arrived both write nothing.
    assert run(serf_view(node, *PUBS)) == 0
    wait_until(lambda: f"{namespace}/syncthing-p8384" in cache.endpoint_slices())
    assert run(serf_view(node, *PUBS)) == 0
    # A publisher fails: its endpoint turns not ready (one replace), then nothing more.
    b_failed = publisher("b", ("syncthing", "192.0.2.11", "8384"), status="failed")
    assert run(serf_view(node, PUBS[0], b_failed)) == 1  # userapp is gone with b's entry
    assert [e["conditions"]["ready"] for e in slice_body()["endpoints"]] == [True, False]
    assert run(serf_view(node, PUBS[0], b_failed)) == 0
    # Prune: everything of ours goes; the user's Service stays.
    wait_until(lambda: f"{namespace}/{dns1035('Docker')}" in cache.services())
    _, writes = bridge.prune_imports(bridge.read_kube(cache), kube=objects, settings=s, cache=cache)
    assert writes == 4
    assert in_namespace(client, namespace, version) == {"services": {"userapp"}, "slices": set()}


def check_created(client: KubeClient, *, namespace: str, slice: dict) -> None:
    """The first pass's objects, as the server stored them."""
    svc = get(client, f"/api/v1/namespaces/{namespace}/services/syncthing", "services")
    assert svc["spec"]["type"] == "ClusterIP" and "selector" not in svc["spec"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("p8384", 8384, 8384)
    ]
    assert svc["metadata"]["labels"][f"{P}/imported-by"] == "lab"
    assert [(e["addresses"], e["conditions"]["ready"]) for e in slice["endpoints"]] == [
        (["192.0.2.10"], True),
        (["192.0.2.11"], True),
    ]
    assert slice["metadata"]["labels"]["kubernetes.io/service-name"] == "syncthing"
    user = get(client, f"/api/v1/namespaces/{namespace}/services/userapp", "services")
    assert f"{P}/imported-by" not in (user["metadata"].get("labels") or {})  # refused


def user_service(client: KubeClient, namespace: str) -> dict:
    body = {
        "metadata": {"name": "userapp", "labels": {"owner": "user"}},
        "spec": {"type": "ClusterIP", "ports": [{"name": "web", "port": 9999}]},
    }
    return client.request(
        "POST",
        f"/api/v1/namespaces/{namespace}/services",
        verb="create",
        resource="services",
        namespace=namespace,
        body=body,
    )


def test_plan_apply_steady_state_and_prune(kube_admin, kube_objects, start_cache):
    node, namespace = KubeObjects.name("imp-node"), KubeObjects.name("imp")
    kube_objects.create_node(node, annotations=record(node))
    make_namespace(kube_admin, namespace)
    before = user_service(kube_admin, namespace)
    cache = start_cache(kube_admin)
    assert cache.wait_synced(15)
    wait_until(lambda: node in cache.nodes() and f"{namespace}/userapp" in cache.services())
    run_lifecycle(kube_admin, cache, node=node, namespace=namespace)
    after = get(kube_admin, f"/api/v1/namespaces/{namespace}/services/userapp", "services")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_ipv6_publishers_get_an_ipv6_slice_the_server_accepts(
    kube_admin, kube_objects, start_cache
):
    """One Service, two slices for one port (IPv4 and IPv6, ``addressType`` each), as the
    server stores them; then no write, then prune."""
    node, namespace = KubeObjects.name("imp6-node"), KubeObjects.name("imp6")
    kube_objects.create_node(node, annotations=record(node))
    make_namespace(kube_admin, namespace)
    s = Settings(node_name=node, cluster="lab", import_services=True, import_namespace=namespace)
    cache = start_cache(kube_admin)
    assert cache.wait_synced(15)
    wait_until(lambda: node in cache.nodes())
    version = bridge.read_kube(cache).slice_version
    objects = Writes(kube_admin, slice_version=version)
    pubs = (
        publisher("a", ("syncthing", "192.0.2.20", "8384")),
        publisher("b", ("syncthing", "2001:db8::20", "8384")),
        publisher("c", ("syncthing", "2001:db8::21", "8384"), status="failed"),
    )

    def run() -> int:
        view = serf_view(node, *pubs)
        return bridge.import_pass(
            view, bridge.read_kube(cache), kube=objects, settings=s, cache=cache
        )[1]

    assert run() == 3  # the Service and two slices
    base = f"/apis/discovery.k8s.io/{version}/namespaces/{namespace}/endpointslices"
    v4 = get(kube_admin, f"{base}/syncthing-p8384", "endpointslices")
    v6 = get(kube_admin, f"{base}/syncthing-p8384-v6", "endpointslices")
    assert (v4["addressType"], v6["addressType"]) == ("IPv4", "IPv6")
    assert [(e["addresses"], e["conditions"]["ready"]) for e in v6["endpoints"]] == [
        (["2001:db8::20"], True),
        (["2001:db8::21"], False),
    ]
    assert v6["metadata"]["labels"]["kubernetes.io/service-name"] == "syncthing"
    assert run() == 0
    wait_until(lambda: f"{namespace}/syncthing-p8384-v6" in cache.endpoint_slices())
    _, writes = bridge.prune_imports(bridge.read_kube(cache), kube=objects, settings=s, cache=cache)
    assert writes == 3
    assert in_namespace(kube_admin, namespace, version) == {"services": set(), "slices": set()}


def test_rbac_mode_the_role_is_exactly_enough(rbac_apiserver, start_cache):
    for manifest in (DEPLOY / "rbac.yaml", DEPLOY / "imports" / "rbac.yaml"):
        applied = rbac_apiserver.kubectl("apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
    admin = client_for(rbac_apiserver)
    user = next(u for u in rbac_apiserver.users if u.name == SERVICE_ACCOUNT_USER)
    bridge_client = client_for(rbac_apiserver, user)
    try:
        admin_objects = KubeObjects(admin)
        node = KubeObjects.name("imp-node")
        admin_objects.create_node(node, annotations=record(node))
        user_service(admin, "cloudy")
        cache = start_cache(bridge_client)
        assert cache.wait_synced(15), "the ServiceAccount could not list+watch"
        wait_until(lambda: node in cache.nodes() and "cloudy/userapp" in cache.services())
        run_lifecycle(bridge_client, cache, node=node, namespace="cloudy")
        # Anywhere else the same writes are refused.
        objects = Writes(bridge_client, slice_version=cache.slice_version)
        body = {"metadata": {"name": "x"}, "spec": {"ports": [{"port": 1}]}}
        with pytest.raises(KubeForbidden, match="forbidden: create services in namespace default"):
            objects.create("Service", namespace="default", body=body)
        admin_objects.cleanup()
    finally:
        bridge_client.close()
        admin.close()


# --- the daemon, end to end: one smoke test (the acceptance suite is tests' own) -----------


def test_daemons_import_a_hand_published_entry_and_remove_it(world):
    from tests.lab.bridges import World
    from tests.test_to_serf import hand_tag, make_namespace, set_raw_tags

    w: World = world(2)
    ns = make_namespace(w, "imp")
    entry = (
        '{"s":"syncthing","d":"sync","m":"x.guifi.local","i":"192.0.2.10","p":"8384","e":"","t":""}'
    )
    set_raw_tags(w.agent_for(w.nodes[1]), {"services": hand_tag(entry)})
    w.start_bridges(args=["--import", "--import-namespace", ns, "--no-to-serf"])
    path = f"/apis/discovery.k8s.io/v1beta1/namespaces/{ns}/endpointslices/syncthing-p8384"

    def slice_ips() -> list[str]:
        try:
            found = get(w.client, path, "endpointslices")
        except Exception:
            return []
        return [a for e in found.get("endpoints") or () for a in e["addresses"]]

    w.wait_for(lambda: slice_ips() == ["192.0.2.10"], 30, "the imported slice")

    def one_writer() -> bool:
        statuses = [b.status()["imports"] for b in w.bridges.values()]
        counted = all(s["services"] == 1 and s["endpoint_slices"] == 1 for s in statuses)
        return counted and len({s["writer"] for s in statuses}) == 1 and None not in statuses

    w.wait_for(one_writer, 20, "every bridge naming the same writer")
    set_raw_tags(w.agent_for(w.nodes[1]), {"services": hand_tag()})
    w.wait_for(
        lambda: in_namespace(w.client, ns, "v1beta1") == {"services": set(), "slices": set()},
        30,
        "removal",
    )


def _one_syncthing_entry(w) -> str:
    """k2's agent publishes one syncthing entry by hand; k1's bridge records itself."""
    from tests.test_to_serf import hand_tag, make_namespace, set_raw_tags

    k1, k2 = w.nodes
    entry = (
        '{"s":"syncthing","d":"sync","m":"x.guifi.local","i":"192.0.2.10","p":"8384","e":"","t":""}'
    )
    set_raw_tags(w.agent_for(k2), {"services": hand_tag(entry)})
    recorded = w.cli(k1, "sync", "--once", "--no-to-serf")
    assert recorded.exit_code == 0, recorded.output
    return make_namespace(w, "imp")


def test_sync_dry_run_apply_nothing_then_prune(world):
    from tests.lab.bridges import World

    w: World = world(2)
    k1, _ = w.nodes
    ns = _one_syncthing_entry(w)
    base = ["sync", "--once", "--no-to-k8s", "--no-to-serf", "--import", "--import-namespace", ns]
    lines = [
        f"import: create Service {ns}/syncthing",
        f"import: create EndpointSlice {ns}/syncthing-p8384",
    ]
    dry = w.cli(k1, *base, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert dry.output.splitlines()[:2] == lines
    assert in_namespace(w.client, ns, "v1beta1") == {"services": set(), "slices": set()}
    applied = w.cli(k1, *base)
    assert applied.output.splitlines()[:2] == lines and "import: 2 write(s) sent" in applied.output
    assert in_namespace(w.client, ns, "v1beta1") == {
        "services": {"syncthing"},
        "slices": {"syncthing-p8384"},
    }
    again = w.cli(k1, *base)
    assert "import: nothing to change" in again.output and "sent" not in again.output
    pruned = w.cli(k1, "sync", "--prune-imports", "--import-namespace", ns)
    assert pruned.exit_code == 0, pruned.output
    assert f"import: delete EndpointSlice {ns}/syncthing-p8384" in pruned.output
    assert f"import: delete Service {ns}/syncthing" in pruned.output
    assert in_namespace(w.client, ns, "v1beta1") == {"services": set(), "slices": set()}
