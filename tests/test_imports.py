"""Gossip -> Kubernetes imports (issue 15), black-box, with real agents and the real apiserver.

Publishers are plain serf agents (no Node, no daemon) whose ``services`` tag is written by
hand in Cloudy's format, as avahi-ps would; three daemons run ``--import``. Every check
compares what the apiserver holds (``tests.lab.imports.imported_objects``) with what the
spec derives from the gossip (``expected_objects``, written from the spec alone, never the
product's planner), so "converged" means exactly equal, not "something appeared".

Every test here runs on the apiserver in RBAC mode, and the daemons and the CLI act as the
serfbridge ServiceAccount with exactly ``deploy/``'s RBAC: the ClusterRole, and the imports'
Role in each import namespace (``grant_imports`` applies the shipped manifest there). A
daemon that logs "forbidden" fails the test. Each test imports into its own namespace (the
first and the last into the default, ``cloudy``), so tests sharing the module's apiserver
never see each other's objects. The one writer is
the daemon ``writer_node`` names (rendezvous over the bridged nodes); its ``/status`` is
the one read for counts.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serfbridge import cloudy, kube
from serfbridge.errors import KubeError, KubeForbidden
from serfbridge.kubemodels import NodeInfo
from serfbridge.plan_publish import PublishSettings, plan_publish
from serfbridge.rpc.models import Member
from tests.fixtures_kube import client_for
from tests.fixtures_world import worlds_on
from tests.lab.apiserver import SERVICE_ACCOUNT_USER
from tests.lab.bridges import BridgeProcess, World
from tests.lab.errors import LabError
from tests.lab.import_model import (
    DEFAULTS,
    Expected,
    Gossiped,
    ImportSettings,
    P,
    dns1035,
    entry,
    expected_objects,
    writer_node,
)
from tests.lab.imports import (
    apiserver_writes,
    create_all,
    delete_marked,
    ensure_namespace,
    gossip,
    grant_imports,
    import_args,
    imported_objects,
    list_in,
    make_namespace,
    publish,
    set_raw_services,
    spec_bodies,
    versions,
)
from tests.lab.serfagents import AgentSpec, SerfAgent, raw_request
from tests.test_kube_rbac import DEPLOY

integration = pytest.mark.integration
CONVERGE = 60.0
DEFAULT_NS = "cloudy"


# --- helpers --------------------------------------------------------------------------------


def add_publishers(w: World, names: list[str]) -> dict[str, SerfAgent]:
    """Plain agents joined to the world's gossip: no Node, no daemon, just a tag."""
    return {name: w.serf.add_agent(AgentSpec(name)) for name in names}


@dataclass
class Importers:
    """The daemons of one cluster running ``--import``, and who among them writes."""

    w: World
    nodes: list[str]
    namespace: str = "cloudy"

    @property
    def writer(self) -> BridgeProcess:
        return self.w.bridges[writer_node(self.nodes)]

    def status(self) -> dict[str, Any]:
        return dict(self.writer.status().get("imports") or {})

    def wait_status(self, want: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        return self.w.wait_for(lambda: (s := self.status()) and want(s) and s, CONVERGE, what)

    def publish(self, agent: SerfAgent, entries: list[cloudy.Entry]) -> None:
        """Publish, then wait until the writer's agent gossips it: a ``settle`` right after
        must compare the API with the new gossip, not with the old one it still matches."""
        publish(agent, entries)
        viewer = self.w.agent_for(writer_node(self.nodes))

        def seen() -> bool:
            member = gossip(viewer).get(agent.name)
            return member is not None and list(member.entries) == list(entries)

        self.w.wait_for(seen, CONVERGE, f"{agent.name}'s new services tag gossiped")

    def settle(
        self,
        ns: str,
        *,
        settings: ImportSettings = DEFAULTS,
        timeout: float = CONVERGE,
        adjust: Callable[[Expected], Expected] = lambda e: e,
        what: str = "imports",
    ) -> Expected:
        """Wait until ``ns`` holds exactly what the gossip (as the writer's agent sees it)
        derives; returns that expectation. Socket and API errors count as "not yet"."""
        viewer = self.w.agent_for(writer_node(self.nodes))
        last: dict[str, Any] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                want = adjust(expected_objects(gossip(viewer), settings))
                got = imported_objects(self.w.client, ns, cluster=settings.cluster)
            except (OSError, LabError, KubeError) as exc:
                last["error"] = repr(exc)
            else:
                if got == want.objects():
                    return want
                last.update(want=want.objects(), got=got)
            time.sleep(0.2)
        raise AssertionError(
            f"{what}: not converged in {timeout:.0f}s\n"
            f"want {json.dumps(last.get('want'), indent=1, sort_keys=True)}\n"
            f"got  {json.dumps(last.get('got'), indent=1, sort_keys=True)}\n"
            f"error {last.get('error')}\n{self.w.logs(40)}"
        )


def start_importers(
    w: World, args: list[str], nodes: list[str] | None = None, namespace: str = "cloudy"
) -> Importers:
    """Daemons with the import flags on ``nodes`` (default: every node), ready."""
    group = Importers(w, list(nodes or w.nodes), namespace)
    w.start_bridges(args=args, nodes=group.nodes)
    return group


def wait_all_recorded(w: World) -> None:
    """Every daemon has recorded itself on its Node (``P/serf-recorded-by``)."""

    def recorded() -> bool:
        keys = {n: w.client.get_node(n).annotations.get(f"{P}/serf-recorded-by") for n in w.nodes}
        return all(by == n for n, by in keys.items())

    w.wait_for(recorded, CONVERGE, "every bridge recorded itself on its Node")


def writers_by_log(w: World) -> list[str]:
    """The nodes whose daemon logged an import write (the applier logs each as the plan
    line ``import: create Service <ns>/<name>`` that ``sync --dry-run`` prints)."""
    return sorted(n for n, b in w.bridges.items() if "import: create Service" in b.log_text())


def slices_of(w: World, ns: str, service: str) -> list[dict[str, Any]]:
    """Every EndpointSlice in ``ns`` labelled for ``service``, ours or not."""
    return [
        s
        for s in list_in(w.client, ns, "endpointslices")
        if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == service
    ]


def metric(bridge: BridgeProcess, name: str, labels: str = "") -> float | None:
    _, text = bridge.get("/metrics")
    match = re.search(rf"^{re.escape(name + labels)} ([0-9.e+-]+)$", text, re.M)
    return float(match[1]) if match else None


def sees(w: World, member: str, status: str) -> Callable[[], bool]:
    """The writer's agent shows ``member`` as ``status`` (``settle`` reads its gossip)."""
    viewer = w.agent_for(writer_node(w.nodes))
    return lambda: w.serf.statuses(viewer).get(member) == status


def user_service(w: World, ns: str, name: str, labels: Mapping[str, str] | None = None) -> dict:
    body = {
        "metadata": {"name": name, "labels": dict(labels or {})},
        "spec": {"type": "ClusterIP", "selector": {"app": "user"}, "ports": [{"port": 80}]},
    }
    path = f"/api/v1/namespaces/{ns}/services"
    return w.client.request(
        "POST", path, verb="create", resource="services", namespace=ns, body=body
    )


def get_service(w: World, ns: str, name: str) -> dict:
    path = f"/api/v1/namespaces/{ns}/services/{name}"
    return w.client.request("GET", path, verb="get", resource="services", namespace=ns)


@pytest.fixture(scope="module")
def rbac_import_lab(rbac_apiserver):
    """The RBAC apiserver with deploy/'s RBAC applied as shipped: the bridge's ClusterRole
    and the imports' Role in the default import namespace, ``cloudy``."""
    client = client_for(rbac_apiserver)
    ensure_namespace(client, DEFAULT_NS)
    client.close()
    # Every RBAC manifest under deploy/ (the bridge's, and the imports' Role wherever it is).
    manifests = sorted(DEPLOY.rglob("*rbac*.yaml"), key=lambda p: (len(p.parts), p))
    assert manifests[0] == DEPLOY / "rbac.yaml", manifests
    for manifest in manifests:
        applied = rbac_apiserver.kubectl("apply", "-f", str(manifest))
        assert applied.returncode == 0, applied.stderr
    return rbac_apiserver


def service_account_kubeconfig(lab: Any) -> str:
    user = next(u for u in lab.users if u.name == SERVICE_ACCOUNT_USER)
    return str(lab.kubeconfig_for(user))


@pytest.fixture
def world(rbac_import_lab, request) -> Iterator[Callable[..., World]]:
    """This module's worlds: the RBAC apiserver, daemons (and the CLI) as the serfbridge
    ServiceAccount, so every acceptance test runs with exactly the shipped RBAC. After a
    passing test, no daemon may have logged a refusal (a missing verb would show there)."""
    yield from worlds_on(
        rbac_import_lab,
        request,
        after_pass=nothing_forbidden,
        bridge_kubeconfig=service_account_kubeconfig(rbac_import_lab),
    )


def nothing_forbidden(w: World) -> None:
    for bridge in w.bridges.values():
        assert "forbidden" not in bridge.log_text().lower(), bridge.log_tail()


def import_namespace(w: World, prefix: str) -> str:
    """A new import namespace with the shipped imports Role applied to it."""
    ns = make_namespace(w.client, prefix)
    grant_imports(w.apiserver, ns)
    return ns


@pytest.fixture
def default_ns(rbac_import_lab) -> Iterator[str]:
    """The default import namespace, emptied of imports before and after the test."""
    client = client_for(rbac_import_lab)
    ensure_namespace(client, DEFAULT_NS)
    delete_marked(client, DEFAULT_NS)
    yield DEFAULT_NS
    with contextlib.suppress(KubeError):
        delete_marked(client, DEFAULT_NS)
    client.close()


# --- the model itself (fast: it is what every integration test trusts) ---------------------


@pytest.mark.parametrize(
    ("source", "name"),
    [
        pytest.param("syncthing", "syncthing", id="valid-kept"),
        pytest.param("lab2-ns-web", "lab2-ns-web", id="k8s-service-kept"),
        pytest.param("Docker", "docker-e6169e95", id="upper-hashed"),
        pytest.param("9p", "x-9p-e0ddf7c8", id="digit-prefixed"),
        pytest.param("a_b..c", "a-b-c-850920ff", id="runs-collapsed"),
        pytest.param("x" * 70, "x" * 54 + "-c71bd109", id="long-cut"),
        pytest.param("", "x--e3b0c442", id="empty"),
    ],
)
def test_dns1035_model_follows_the_spec(source: str, name: str) -> None:
    """Hashes are sha256(source)[:8], as the spec says; literal, so the model cannot drift."""
    assert dns1035(source) == name


@given(st.text(max_size=80), st.text(max_size=80))
def test_dns1035_model_is_always_valid_and_injective_in_practice(a: str, b: str) -> None:
    for x in (a, b):
        name = dns1035(x)
        assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63, name
        assert dns1035(x) == name  # deterministic
        assert (name == x) == bool(
            re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", x) and len(x) <= 63 and "--" not in x
        )
    if a != b:
        assert dns1035(a) != dns1035(b)


def test_model_statuses_and_skips() -> None:
    members = {
        "a": Gossiped("alive", (entry("syncthing", 22000, "10.77.0.1", member="a"),)),
        "b": Gossiped("failed", (entry("syncthing", 22000, "10.77.0.2", member="b"),)),
        "c": Gossiped("left", (entry("syncthing", 22000, "10.77.0.3", member="c"),)),
        "d": Gossiped(
            "alive",
            (
                entry("syncthing", 22000, "127.0.0.1", member="d"),
                entry("syncthing", "TEST", "10.77.0.4", member="d"),
            ),
        ),
        "e": Gossiped("alive", (), undecodable=True),
    }
    got = expected_objects(members)
    assert list(got.services) == ["syncthing"]
    assert got.slices["syncthing-p22000"]["endpoints"] == [
        [["10.77.0.1"], True],
        [["10.77.0.2"], False],
    ]
    assert got.skipped == {"ip": 1, "port": 1, "decode": 1}


@integration
def test_lab_reads_back_what_the_spec_writes(kube_objects) -> None:
    """The harness itself: objects written by hand exactly as the spec describes them read
    back equal to the model; other clusters' and users' objects are not ours."""
    client = kube_objects.client
    ns = make_namespace(client, "implab")
    members = {
        "pub-a": Gossiped("alive", (entry("syncthing", 22000, "10.77.8.1", member="pub-a"),
                                    entry("Docker", 2375, "10.77.8.1", member="pub-a"))),
        "pub-b": Gossiped("failed", (entry("syncthing", 22000, "10.77.8.2", member="pub-b"),
                                     entry("web", 80, "10.77.8.2", member="pub-b",
                                           txt="k8s=lab2/apps/web/80"))),
    }  # fmt: skip
    want = expected_objects(members)
    assert len(want.services) == 3 and len(want.slices) == 3
    create_all(client, ns, spec_bodies(want))
    other = {**want.services["syncthing"], "labels": {f"{P}/imported-by": "lab2"}}
    user = {"metadata": {"name": "user"}, "spec": {"ports": [{"port": 80}]}}
    create_all(client, ns, [*spec_bodies(Expected(services={"other": other})), ("services", user)])
    assert imported_objects(client, ns) == want.objects()
    assert list(imported_objects(client, ns, cluster="lab2")["services"]) == ["other"]
    delete_marked(client, ns)
    assert [o["metadata"]["name"] for o in list_in(client, ns, "services")] == ["user"]


# --- unit: imported Services never reach to-serf ---------------------------------------------


@pytest.mark.parametrize(
    ("labels", "published"),
    [
        pytest.param({}, True, id="plain-service-published"),
        pytest.param({f"{P}/imported-by": "lab"}, False, id="ours-imported"),
        pytest.param({f"{P}/imported-by": "lab2"}, False, id="other-cluster-imported"),
        pytest.param({f"{P}/imported-by": ""}, False, id="empty-marker"),
    ],
)
def test_imported_services_never_reach_to_serf(labels: dict[str, str], published: bool) -> None:
    svc = kube.parse_service(
        {
            "metadata": {"namespace": "cloudy", "name": "syncthing", "labels": labels},
            "spec": {"type": "NodePort", "ports": [{"name": "p1", "port": 1, "nodePort": 30001}]},
        }
    )
    nodes = {"k1": NodeInfo("k1", "k1", {}, {}, (("InternalIP", "10.0.0.1"),), True)}
    plan = plan_publish(
        services={"cloudy/syncthing": svc},
        slices={},
        nodes=nodes,
        members=[Member("serf-k1", "10.0.0.1", 7946, {"k8s": "lab/k1"}, "alive")],
        current_tags={},
        settings=PublishSettings(self_node="k1", cluster="lab", self_member="serf-k1"),
    )
    assert bool(plan.entries) == published, plan.entries


# --- 1. hand-published entries appear ----------------------------------------------------------


def publish_test_one(pubs: Mapping[str, SerfAgent]) -> None:
    """Test 1's gossip: two real publishers, one hostile, one that does not decode."""
    publish(pubs["pub-a"], [entry("syncthing", 22000, "10.77.1.1", member="pub-a"),
                            entry("Docker", 2375, "10.77.1.1", member="pub-a")])  # fmt: skip
    publish(pubs["pub-b"], [entry("syncthing", 22000, "10.77.1.2", member="pub-b"),
                            entry("syncthing", 8384, "10.77.1.2", member="pub-b")])  # fmt: skip
    # Hostile and foreign entries: skipped and counted, or (ours) skipped silently.
    ours = entry("kubernetes", 30080, "10.77.1.3", member="pub-c", txt="k8s=lab/x/web/80")
    publish(pubs["pub-c"], [entry("syncthing", 22000, "127.0.0.1", member="pub-c"),
                            entry("syncthing", 22000, "169.254.0.9", member="pub-c"),
                            entry("Docker", 2375, "224.0.0.251", member="pub-c"),
                            entry("syncthing", "TEST", "10.77.1.3", member="pub-c"),
                            ours])  # fmt: skip
    set_raw_services(pubs["pub-d"], "not*base64*bzip2")


def check_counts(w: World, group: Importers) -> None:
    """/status and /metrics of test 1, on the writer; nobody else wrote."""
    expected = {
        "services": 2,
        "endpoint_slices": 3,
        "skipped": {"ip": 3, "port": 1, "decode": 1},
        "refused": [],
    }
    spec_keys = ("services", "endpoint_slices", "skipped", "refused")  # more may follow

    def shown(status: dict[str, Any]) -> dict[str, Any]:
        status = {k: status.get(k) for k in spec_keys}
        return {**status, "skipped": {k: n for k, n in (status["skipped"] or {}).items() if n}}

    # Every publisher's tag must have reached the writer's pass, the broken one included.
    group.wait_status(lambda s: shown(s) == expected, "imports in /status")
    bridge = group.writer
    assert writers_by_log(w) == [bridge.node], "exactly one bridge writes: the first ranked"
    assert metric(bridge, "serfbridge_imported", '{kind="services"}') == 2.0
    assert metric(bridge, "serfbridge_imported", '{kind="endpoint_slices"}') == 3.0
    assert metric(bridge, "serfbridge_import_skipped", '{reason="ip"}') == 3.0
    assert metric(bridge, "serfbridge_import_refused") == 0.0


@integration
def test_hand_published_syncthing_and_docker_appear(world, default_ns) -> None:
    w: World = world(3)
    pubs = add_publishers(w, ["pub-a", "pub-b", "pub-c", "pub-d"])
    group = start_importers(w, import_args())  # no --import-namespace: the default, cloudy
    # The writer is ranked among the bridges that have recorded themselves on their Node;
    # publish once all have, so the first write is already the first-ranked bridge's.
    wait_all_recorded(w)
    publish_test_one(pubs)

    want = group.settle(default_ns)
    docker = dns1035("Docker")
    assert docker.startswith("docker-") and docker != "docker"
    assert sorted(want.services) == sorted(["syncthing", docker])
    got = imported_objects(w.client, default_ns)
    assert [p["port"] for p in got["services"]["syncthing"]["ports"]] == [8384, 22000]
    assert got["slices"]["syncthing-p22000"]["endpoints"] == [
        [["10.77.1.1"], True],
        [["10.77.1.2"], True],
    ]
    assert got["slices"][dns1035(f"{docker}-p2375")]["endpoints"] == [[["10.77.1.1"], True]]
    assert got["slices"]["syncthing-p8384"]["sources"] == [
        {"ip": "10.77.1.2", "member": "pub-b", "m": "pub-b.guifi.local",
         "d": "syncthing_on_pub-b", "e": "guifi"}
    ]  # fmt: skip
    for svc in list_in(w.client, default_ns, "services"):
        assert svc["spec"]["type"] == "ClusterIP" and not svc["spec"].get("selector")
    check_counts(w, group)


@integration
def test_import_type_and_cidr_filters(world) -> None:
    w: World = world(3)
    ns = import_namespace(w, "imp1f")
    pubs = add_publishers(w, ["pub-a", "pub-b"])
    publish(pubs["pub-a"], [entry("syncthing", 22000, "10.77.10.1", member="pub-a"),
                            entry("Docker", 2375, "10.77.10.1", member="pub-a")])  # fmt: skip
    relay = entry("syncthing-relay", 22067, "10.77.10.2", member="pub-b")
    publish(pubs["pub-b"], [entry("syncthing", 22000, "192.0.2.7", member="pub-b"), relay])
    flags = ["--import-type", "sync.*", "--import-cidr", "10.77.10.0/24,10.78.0.0/16"]
    group = start_importers(w, import_args(ns, *flags))
    only = ImportSettings(type_regex="sync.*", cidrs=("10.77.10.0/24", "10.78.0.0/16"))
    want = group.settle(ns, settings=only, what="filtered imports")
    assert sorted(want.services) == ["syncthing", "syncthing-relay"]
    assert want.slices["syncthing-p22000"]["endpoints"] == [[["10.77.10.1"], True]]
    status = group.wait_status(lambda s: "skipped" in s, "imports in /status")
    assert {k: n for k, n in status["skipped"].items() if n} == {"ip": 1}  # Docker: no match


# --- 2. endpoint lifecycle ---------------------------------------------------------------------


@integration
def test_stopped_publisher_not_ready_unpublished_removed_last_entry_removes_service(
    world,
) -> None:
    w: World = world(3)
    ns = import_namespace(w, "imp2")
    pubs = add_publishers(w, ["pub-a", "pub-b", "pub-c"])
    entries = {
        "pub-a": [entry("syncthing", 22000, "10.77.2.1", member="pub-a")],
        "pub-b": [
            entry("syncthing", 22000, "10.77.2.2", member="pub-b"),
            entry("Docker", 2375, "10.77.2.2", member="pub-b"),
        ],
        "pub-c": [entry("syncthing", 22000, "10.77.2.3", member="pub-c")],
    }
    for name, agent in pubs.items():
        publish(agent, entries[name])
    group = start_importers(w, import_args(ns), namespace=ns)
    group.settle(ns, what="three publishers")
    docker = dns1035("Docker")

    def endpoints() -> list[Any]:
        return imported_objects(w.client, ns)["slices"]["syncthing-p22000"]["endpoints"]

    pubs["pub-a"].stop()  # SIGSTOP: the gossip declares it failed
    w.wait_for(sees(w, "pub-a", "failed"), 40, "pub-a failed")
    group.settle(ns, what="pub-a not ready")
    assert [["10.77.2.1"], False] in endpoints()

    group.publish(pubs["pub-c"], [])
    group.settle(ns, what="pub-c unpublished")
    assert [["10.77.2.3"], True] not in endpoints() and len(endpoints()) == 2

    group.publish(pubs["pub-b"], entries["pub-b"][:1])  # Docker's last entry goes
    want = group.settle(ns, what="Docker's last entry unpublished")
    assert docker not in want.services
    assert docker not in imported_objects(w.client, ns)["services"]
    assert not slices_of(w, ns, docker)

    leave_then_come_back(w, group, pubs, endpoints)


def leave_then_come_back(
    w: World, group: Importers, pubs: Mapping[str, SerfAgent], endpoints: Callable[[], Any]
) -> None:
    """Test 2's end: pub-b leaves (its endpoint goes), frozen pub-a comes back (ready)."""
    ns = group.namespace
    error, _ = raw_request(pubs["pub-b"].rpc_addr, "leave")  # a graceful leave: `left`
    assert not error, error
    w.wait_for(sees(w, "pub-b", "left"), 40, "pub-b left")
    group.settle(ns, what="pub-b left")
    assert endpoints() == [[["10.77.2.1"], False]]
    pubs["pub-a"].cont()
    w.wait_for(sees(w, "pub-a", "alive"), 40, "pub-a alive again")
    group.settle(ns, what="pub-a ready again")
    assert endpoints() == [[["10.77.2.1"], True]]


@integration
def test_writer_that_cannot_read_members_deletes_nothing(world) -> None:
    """Build rule 3: an empty view after an error deletes nothing. The writer's own agent
    dies (its daemon's ``members`` fails at once); the imports stay exactly as they were,
    and the other bridges, who see nothing new to import, write nothing either."""
    w: World = world(3)
    ns = import_namespace(w, "imp2p")
    pubs = add_publishers(w, ["pub-a"])
    publish(pubs["pub-a"], [entry("syncthing", 22000, "10.77.11.1", member="pub-a"),
                            entry("Docker", 2375, "10.77.11.1", member="pub-a")])  # fmt: skip
    group = start_importers(w, import_args(ns))
    group.settle(ns, what="imports before the agent dies")
    before = versions(w.client, ns)
    agent = w.agent_for(writer_node(group.nodes))
    agent.kill()
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:
        assert versions(w.client, ns) == before, "an import changed while members were unread"
        time.sleep(0.3)
    assert group.writer.running()
    agent.start()
    w.serf.wait_joined()
    group.settle(ns, what="imports after the agent is back")
    assert versions(w.client, ns) == before


@integration
def test_writer_in_a_minority_writes_nothing(world) -> None:
    """One writer only while it sees a majority: with the two other bridges' agents frozen
    (failed in its view, 1/3 alive), a gossip change is not imported until they are back."""
    w: World = world(3)
    ns = import_namespace(w, "imp2m")
    pubs = add_publishers(w, ["pub-a"])
    publish(pubs["pub-a"], [entry("syncthing", 22000, "10.77.12.1", member="pub-a")])
    group = start_importers(w, import_args(ns))
    group.settle(ns, what="imports before the partition")
    first = writer_node(group.nodes)
    others = [n for n in group.nodes if n != first]
    for node in others:
        w.agent_for(node).stop()
    viewer = w.agent_for(first)
    w.wait_for(
        lambda: all(w.serf.statuses(viewer).get(w.agent_for(n).name) == "failed" for n in others),
        40,
        "the writer's agent sees the other two failed",
    )
    before, writes = versions(w.client, ns), apiserver_writes(w.apiserver)
    publish(pubs["pub-a"], [entry("syncthing", 22000, "10.77.12.1", member="pub-a"),
                            entry("Docker", 2375, "10.77.12.1", member="pub-a")])  # fmt: skip
    w.wait_for(
        lambda: any(e.type == "Docker" for e in gossip(viewer)["pub-a"].entries),
        20,
        "Docker in the writer's gossip",
    )
    time.sleep(6)  # several passes of the writer's daemon on the new gossip
    assert versions(w.client, ns) == before, "a minority writer imported"
    assert apiserver_writes(w.apiserver) == writes
    for node in others:
        w.agent_for(node).cont()
    w.serf.wait_joined()
    want = group.settle(ns, what="imports once the majority is back")
    assert dns1035("Docker") in want.services


# --- 3. another cluster's Service --------------------------------------------------------------


def lb_service(w: World, ns: str, name: str, port: int, ip: str, side: str) -> None:
    body = {
        "metadata": {"name": name, "labels": {"side": side}},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": name},
            "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}],
        },
    }
    base = f"/api/v1/namespaces/{ns}/services"
    w.client.request("POST", base, verb="create", resource="services", namespace=ns, body=body)
    # No load-balancer controller in the lab: the address is set as one would set it.
    w.client.request(
        "PATCH",
        f"{base}/{name}/status",
        verb="patch",
        resource="services",
        namespace=ns,
        body={"status": {"loadBalancer": {"ingress": [{"ip": ip}]}}},
        content_type=kube.MERGE_PATCH,
    )


@integration
def test_other_clusters_service_imported_our_own_never(world) -> None:
    w: World = world(4)
    k1, k2, k3, k4 = w.nodes
    src, imp = make_namespace(w.client, "src"), import_namespace(w, "imp3")
    # A LoadBalancer's address is what to-serf publishes as `i` (agents are on loopback).
    lb_service(w, src, "web", 8443, "10.77.3.1", side="b")
    lb_service(w, src, "mine", 9443, "10.77.3.2", side="a")
    group = start_importers(
        w, import_args(imp, "--namespace", src, "--selector", "side=a"), nodes=[k1, k2, k3]
    )
    other = BridgeProcess(
        node=k4,
        rpc_addr=w.agent_for(k4).rpc_addr,
        kubeconfig=w.bridge_kubeconfig,
        workdir=w.serf.workdir,
        cluster="lab2",
        args=["--namespace", src, "--selector", "side=b", "--replicas", "1"],
    )
    w.bridges[k4] = other.start()
    other.wait_ready(60)

    def published() -> bool:
        txts = {e.txt for m in gossip(w.agent_for(k1)).values() for e in m.entries}
        return {f"k8s=lab2/{src}/web/8443", f"k8s=lab/{src}/mine/9443"} <= txts

    w.wait_for(published, CONVERGE, "both clusters' entries in the gossip")
    want = group.settle(imp, what="lab2's web imported")
    name = dns1035(f"lab2-{src}-web")
    assert list(want.services) == [name]
    got = imported_objects(w.client, imp)
    assert got["services"][name]["annotations"][f"{P}/source"] == f"lab2/{src}/web"
    assert got["services"][name]["labels"][f"{P}/import-source"] == "k8s-service"
    assert got["slices"][dns1035(f"{name}-p8443")]["endpoints"] == [[["10.77.3.1"], True]]
    time.sleep(3)  # more passes: our own `mine` must still not come back
    everything = list_in(w.client, imp, "services") + list_in(w.client, imp, "endpointslices")
    assert [o["metadata"]["name"] for o in everything if "mine" in json.dumps(o)] == []
    assert imported_objects(w.client, imp) == got


# --- 4. a user's Service of the same name ------------------------------------------------------


@integration
def test_users_service_of_the_same_name_is_never_touched_and_reported(world) -> None:
    w: World = world(3)
    ns = import_namespace(w, "imp4")
    mine = user_service(w, ns, "syncthing", labels={"team": "user"})
    pubs = add_publishers(w, ["pub-a"])
    publish(
        pubs["pub-a"],
        [
            entry("syncthing", 22000, "10.77.4.1", member="pub-a"),
            entry("Docker", 2375, "10.77.4.1", member="pub-a"),
        ],
    )

    def without_syncthing(e: Expected) -> Expected:
        e.services.pop("syncthing")
        e.slices = {
            n: s
            for n, s in e.slices.items()
            if s["labels"]["kubernetes.io/service-name"] != "syncthing"
        }
        return e

    group = start_importers(w, import_args(ns))
    group.settle(ns, adjust=without_syncthing, what="Docker imported, syncthing refused")
    status = group.wait_status(lambda s: s.get("refused") == ["syncthing"], "syncthing refused")
    assert status["services"] == 1
    assert metric(group.writer, "serfbridge_import_refused") == 1.0
    time.sleep(5)  # several passes
    now = get_service(w, ns, "syncthing")
    assert now["metadata"]["resourceVersion"] == mine["metadata"]["resourceVersion"]
    assert now["metadata"].get("labels") == {"team": "user"}
    assert now["spec"]["selector"] == {"app": "user"}
    assert not slices_of(w, ns, "syncthing")


# --- 5. crash consistency --------------------------------------------------------------------

TYPES = {"syncthing": (22000, 8384), "Docker": (2375,), "web": (80, 443), "ssh": (22,)}


def _random_action(
    rng: random.Random,
    state: dict[str, dict[tuple[str, int], cloudy.Entry]],
    ips: Mapping[str, str],
) -> str:
    member = rng.choice(sorted(state))
    mine = state[member]
    if mine and rng.random() < 0.45:
        del mine[rng.choice(sorted(mine))]
        return member
    type = rng.choice(sorted(TYPES))
    port = rng.choice(TYPES[type])
    mine[(type, port)] = entry(type, port, ips[member], member=member)
    return member


def random_walk(
    pubs: Mapping[str, SerfAgent], bridge: BridgeProcess, ips: Mapping[str, str]
) -> dict[str, dict[tuple[str, int], cloudy.Entry]]:
    """50 random publish/unpublish actions; the writer killed -9 (and restarted) at 10 of
    them, a random moment after the change. Returns what each publisher ends up with."""
    rng = random.Random(20261203)
    kills = set(rng.sample(range(50), 10))
    state: dict[str, dict[tuple[str, int], cloudy.Entry]] = {n: {} for n in pubs}
    for step in range(50):
        member = _random_action(rng, state, ips)
        publish(pubs[member], list(state[member].values()))
        time.sleep(rng.uniform(0.0, 0.4))
        if step in kills:
            time.sleep(rng.uniform(0.0, 0.5))  # lands anywhere in a pass, writes included
            bridge.kill()
            bridge.start()
            if rng.random() < 0.5:
                bridge.wait_ready(60)  # sometimes a full start before the next change
    return state


@integration
def test_crash_consistency_50_actions_10_kill_9_of_the_writer(world) -> None:
    w: World = world(3)
    ns = import_namespace(w, "imp5")
    names = ["pub-a", "pub-b", "pub-c"]
    ips = {n: f"10.77.5.{i + 1}" for i, n in enumerate(names)}
    pubs = add_publishers(w, names)
    group = start_importers(w, import_args(ns))
    bridge, started = group.writer, time.monotonic()
    state = random_walk(pubs, bridge, ips)
    # The expectation from what was published, all publishers alive; the gossip must agree.
    final = {n: Gossiped("alive", tuple(state[n].values())) for n in names}
    want = expected_objects(final)
    assert want.services, "the random walk ended with nothing published: a vacuous check"
    bridge.wait_ready(60)
    got = group.settle(ns, what="after 50 actions and 10 kill -9")
    assert got.objects() == want.objects()
    assert all(b.running() for b in w.bridges.values())
    assert len(bridge.pids) == 11
    assert writers_by_log(w) == [bridge.node], "the killed daemon was not the one writer"
    print(
        f"crash: {len(want.services)} Services, {len(want.slices)} EndpointSlices after 50 "
        f"actions, 10 kills, {time.monotonic() - started:.0f}s"
    )


def assert_quiet(w: World, group: Importers, lab: Any, *, seconds: float) -> None:
    """No write on Services/EndpointSlices at the apiserver (no-op PUTs counted too) and
    no resourceVersion moved for ``seconds``, while the writer's passes kept running."""
    ns = group.namespace
    writes0, versions0 = apiserver_writes(lab), versions(w.client, ns)
    sync0 = group.writer.status()["last_sync"]
    time.sleep(seconds)
    writes1, versions1 = apiserver_writes(lab), versions(w.client, ns)
    sync1 = group.writer.status()["last_sync"]
    assert writes1 == writes0, f"{writes1 - writes0} writes on Services/EndpointSlices"
    assert versions1 == versions0
    assert sync1 != sync0, "no pass ran in the window: the zero is vacuous"


# --- 6. zero writes, dry run, prune --------------------------------------------------------------


@integration
def test_zero_writes_when_stable_then_dry_run_and_prune(world) -> None:
    w: World = world(3)
    ns = import_namespace(w, "imp6")
    pubs = add_publishers(w, ["pub-a", "pub-b"])
    publish(
        pubs["pub-a"],
        [
            entry("syncthing", 22000, "10.77.6.1", member="pub-a"),
            entry("web", 80, "10.77.6.1", member="pub-a"),
        ],
    )
    publish(pubs["pub-b"], [entry("syncthing", 22000, "10.77.6.2", member="pub-b")])
    user_service(w, ns, "user-svc")
    user_service(w, ns, "foreign", labels={f"{P}/imported-by": "lab2"})  # not our marker
    group = start_importers(w, import_args(ns, "--resync", "5"), namespace=ns)
    group.settle(ns, what="imports before the quiet window")
    time.sleep(2)
    assert_quiet(w, group, w.apiserver, seconds=30)

    # The dry run plans for an empty namespace (so it has creates to show), writes nothing.
    node, dry_ns = writer_node(group.nodes), make_namespace(w.client, "imp6dry")
    dry = w.cli(node, "sync", "--dry-run", *import_args(dry_ns))
    assert dry.exit_code == 0, dry.output
    for line in (
        f"import: create Service {dry_ns}/syncthing",
        f"import: create Service {dry_ns}/web",
    ):
        assert line in dry.output, dry.output
    assert versions(w.client, dry_ns) == {}

    for bridge in w.bridges.values():
        bridge.terminate()  # nobody imports again behind the prune
    pruned = w.cli(node, "sync", "--prune-imports", "--import-namespace", ns)
    assert pruned.exit_code == 0, pruned.output
    assert f"{ns}/syncthing" in pruned.output and f"{ns}/web" in pruned.output, pruned.output
    assert imported_objects(w.client, ns) == {"services": {}, "slices": {}}
    left = {o["metadata"]["name"] for o in list_in(w.client, ns, "services")}
    assert left == {"user-svc", "foreign"}


# --- 7. RBAC mode ------------------------------------------------------------------------------


@integration
def test_rbac_mode_imports_updates_deletes_and_prunes(world, default_ns) -> None:
    w: World = world(3)
    user = next(u for u in w.apiserver.users if u.name == SERVICE_ACCOUNT_USER)
    sa = client_for(w.apiserver, user)
    try:
        _rbac_scenario(w, w.bridge_kubeconfig, sa)
    finally:
        sa.close()


def _rbac_scenario(w: World, sa_config: str, sa: kube.KubeClient) -> None:
    pubs = add_publishers(w, ["pub-a", "pub-b"])
    publish(pubs["pub-a"], [entry("syncthing", 22000, "10.77.7.1", member="pub-a")])
    publish(
        pubs["pub-b"],
        [
            entry("syncthing", 22000, "10.77.7.2", member="pub-b"),
            entry("Docker", 2375, "10.77.7.2", member="pub-b"),
        ],
    )
    group = start_importers(w, import_args())
    group.settle(DEFAULT_NS, what="created as the ServiceAccount")
    group.publish(pubs["pub-a"], [entry("syncthing", 22001, "10.77.7.1", member="pub-a")])
    group.settle(DEFAULT_NS, what="updated (a new port) as the ServiceAccount")
    group.publish(pubs["pub-b"], [])
    want = group.settle(DEFAULT_NS, what="deleted as the ServiceAccount")
    assert dns1035("Docker") not in want.services
    nothing_forbidden(w)
    # Exactly the verbs needed: create/update/delete, so a patch is refused even here ...
    path = f"/api/v1/namespaces/{DEFAULT_NS}/services/syncthing"
    with pytest.raises(KubeForbidden):
        sa.request(
            "PATCH",
            path,
            verb="patch",
            resource="services",
            namespace=DEFAULT_NS,
            body={"metadata": {"labels": {"x": "y"}}},
            content_type=kube.MERGE_PATCH,
        )
    # ... and the Role is the namespace's only: a create is refused anywhere else.
    body = {"metadata": {"name": "x"}, "spec": {"ports": [{"port": 80}]}}
    with pytest.raises(KubeForbidden):
        sa.request(
            "POST",
            "/api/v1/namespaces/default/services",
            verb="create",
            resource="services",
            namespace="default",
            body=body,
        )
    for bridge in w.bridges.values():
        bridge.terminate()
    pruned = w.cli(w.nodes[0], "sync", "--prune-imports", kubeconfig=sa_config)
    assert pruned.exit_code == 0, pruned.output
    assert imported_objects(w.client, DEFAULT_NS) == {"services": {}, "slices": {}}
