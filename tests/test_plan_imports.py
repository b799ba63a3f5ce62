"""The imports planner: sources, names, bodies, the one writer, partial views, idempotence."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfbridge import cloudy, rendezvous
from serfbridge.cloudy import Entry
from serfbridge.import_names import dns1035
from serfbridge.kube_json import parse_endpoint_slice, parse_service
from serfbridge.kubemodels import NodeInfo, ServiceInfo, ServicePort, SliceInfo
from serfbridge.plan_imports import WRITER_KEY, ImportPlan, plan_imports, plan_prune
from serfbridge.plan_settings import PlanSettings
from serfbridge.rpc.models import Member

P = "serfbridge.io"
BRIDGES = ("k1", "k2", "k3")
WRITER = rendezvous.rank(WRITER_KEY, BRIDGES)[0]
OTHER = next(n for n in BRIDGES if n != WRITER)


def node(name: str) -> NodeInfo:
    own = {f"{P}/serf-member": f"serf-{name}", f"{P}/serf-recorded-by": name}
    return NodeInfo(name, name, {}, own, (("InternalIP", f"10.0.0.{name[-1]}"),), True)


NODES = {n: node(n) for n in BRIDGES}


def bridge_members(**status: str) -> list[Member]:
    return [
        Member(f"serf-{n}", f"10.0.0.{n[-1]}", 7946, {"k8s": f"lab/{n}"}, status.get(n, "alive"))
        for n in BRIDGES
    ]


def entry(type: str, ip: str, port: str = "8384", txt: str = "", **kw: str) -> Entry:
    return Entry(type, kw.get("d", "desc"), kw.get("m", "h.guifi.local"), ip, port, "mc", txt)


def publisher(name: str, *entries: Entry, status: str = "alive") -> Member:
    tags = {cloudy.SERVICES_TAG: cloudy.encode_services(entries)} if entries else {}
    return Member(name, entries[0].ip if entries else "192.0.2.1", 7946, tags, status)


def cfg(self_node: str = WRITER, **kw: object) -> PlanSettings:
    return PlanSettings(self_node=self_node, cluster="lab", self_member=f"serf-{self_node}", **kw)


def plan(
    pubs: list[Member],
    *,
    services: dict[str, ServiceInfo] | None = None,
    slices: dict[str, SliceInfo] | None = None,
    synced: bool = True,
    settings: PlanSettings | None = None,
    bridges: list[Member] | None = None,
) -> ImportPlan:
    return plan_imports(
        [*(bridge_members() if bridges is None else bridges), *pubs],
        nodes=NODES,
        services=services or {},
        slices=slices or {},
        settings=settings or cfg(),
        synced=synced,
        slice_version="v1beta1",
    )


def applied(result: ImportPlan) -> tuple[dict[str, ServiceInfo], dict[str, SliceInfo]]:
    """The objects a plan's creates and replaces leave behind, as the cache parses them."""
    services, slices = {}, {}
    for write in result.writes:
        if write.verb == "delete" or write.body is None:
            continue
        key = f"{write.namespace}/{write.name}"
        if write.kind == "Service":
            services[key] = parse_service(write.body)
        else:
            slices[key] = parse_endpoint_slice(write.body)
    return services, slices


SYNC = [
    publisher("a", entry("syncthing", "192.0.2.10")),
    publisher("b", entry("syncthing", "192.0.2.11"), entry("Docker", "192.0.2.11", "2375")),
]


def test_creates_a_service_and_a_slice_per_type() -> None:
    result = plan(SYNC)
    assert [w.describe() for w in result.writes] == [
        f"create Service cloudy/{dns1035('Docker')}",
        "create Service cloudy/syncthing",
        f"create EndpointSlice cloudy/{dns1035(dns1035('Docker') + '-p2375')}",
        "create EndpointSlice cloudy/syncthing-p8384",
    ]
    svc = next(w.body for w in result.writes if w.name == "syncthing")
    assert svc["spec"] == {
        "type": "ClusterIP",
        "ports": [{"name": "p8384", "port": 8384, "targetPort": 8384, "protocol": "TCP"}],
    }
    assert svc["metadata"]["labels"] == {
        f"{P}/imported-by": "lab",
        f"{P}/import-source": "cloudy-type",
    }
    assert svc["metadata"]["annotations"] == {f"{P}/cloudy-type": "syncthing"}
    sl = next(w.body for w in result.writes if w.name == "syncthing-p8384")
    assert sl["apiVersion"] == "discovery.k8s.io/v1beta1"
    assert sl["addressType"] == "IPv4"
    assert sl["metadata"]["labels"] == {
        "kubernetes.io/service-name": "syncthing",
        "endpointslice.kubernetes.io/managed-by": P,  # "P/serfbridge" is no label value
        f"{P}/imported-by": "lab",
    }
    assert sl["endpoints"] == [
        {"addresses": ["192.0.2.10"], "conditions": {"ready": True}},
        {"addresses": ["192.0.2.11"], "conditions": {"ready": True}},
    ]
    sources = json.loads(sl["metadata"]["annotations"][f"{P}/sources"])
    assert [s["member"] for s in sources] == ["a", "b"]
    assert sources[0] == {
        "ip": "192.0.2.10",
        "member": "a",
        "m": "h.guifi.local",
        "d": "desc",
        "e": "mc",
    }
    assert result.counts == {"services": 2, "endpoint_slices": 2}
    assert result.writer == WRITER


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        pytest.param("alive", [True], id="alive-ready"),
        pytest.param("failed", [False], id="failed-not-ready"),
        pytest.param("leaving", [False], id="leaving-not-ready"),
        pytest.param("left", None, id="left-not-listed"),
    ],
)
def test_member_status_sets_readiness(status: str, ready: list[bool] | None) -> None:
    result = plan([publisher("a", entry("syncthing", "192.0.2.10"), status=status)])
    bodies = [w.body for w in result.writes if w.kind == "EndpointSlice"]
    if ready is None:
        assert result.writes == ()
    else:
        assert [e["conditions"]["ready"] for e in bodies[0]["endpoints"]] == ready


@pytest.mark.parametrize(
    ("bad", "reason", "kw"),
    [
        pytest.param(entry("syncthing", "not-an-ip"), "ip", {}, id="not-ip"),
        pytest.param(entry("syncthing", "127.0.0.1"), "ip", {}, id="loopback"),
        pytest.param(entry("syncthing", "169.254.1.1"), "ip", {}, id="link-local"),
        pytest.param(entry("syncthing", "224.0.0.1"), "ip", {}, id="multicast"),
        pytest.param(entry("syncthing", "0.0.0.0"), "ip", {}, id="unspecified"),
        pytest.param(entry("syncthing", "fe80::1"), "ip", {}, id="v6-link-local"),
        pytest.param(
            entry("syncthing", "198.51.100.1"), "ip", {"import_cidr": ("192.0.2.0/24",)}, id="cidr"
        ),
        pytest.param(entry("syncthing", "192.0.2.9", "0"), "port", {}, id="port-0"),
        pytest.param(entry("syncthing", "192.0.2.9", "65536"), "port", {}, id="port-big"),
        pytest.param(entry("syncthing", "192.0.2.9", "TEST"), "port", {}, id="port-text"),
    ],
)
def test_unusable_entries_are_skipped_and_counted(bad: Entry, reason: str, kw: dict) -> None:
    good = entry("syncthing", "192.0.2.10")
    result = plan([publisher("a", good), publisher("x", bad)], settings=cfg(**kw))
    assert result.skipped == {reason: 1}
    sl = next(w.body for w in result.writes if w.kind == "EndpointSlice")
    assert [e["addresses"] for e in sl["endpoints"]] == [["192.0.2.10"]]


def test_cidr_allows_inside() -> None:
    result = plan(SYNC, settings=cfg(import_cidr=("192.0.2.0/28",)))
    assert result.skipped == {}
    assert result.counts["services"] == 2


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        pytest.param("!!!not base64", {"decode": 1}, id="garbage"),
        pytest.param("", {"decode": 1}, id="empty"),
    ],
)
def test_undecodable_tag_is_counted_not_raised(tag: str, expected: dict) -> None:
    hostile = Member("h", "192.0.2.5", 7946, {"services": tag}, "alive")
    result = plan([hostile, *SYNC])
    assert result.skipped == expected
    assert result.counts["services"] == 2


def test_type_regex_and_our_own_entries_are_left_out_silently() -> None:
    ours = entry("kubernetes", "192.0.2.20", "30080", txt="k8s=lab/default/web/80")
    result = plan([*SYNC, publisher("c", ours)], settings=cfg(import_type="sync.*"))
    assert [w.name for w in result.writes if w.kind == "Service"] == ["syncthing"]
    assert result.skipped == {}


def test_another_clusters_service_is_imported_by_its_service() -> None:
    theirs = entry("kubernetes", "192.0.2.30", "30080", txt="k8s=far/default/web/80")
    result = plan([publisher("f", theirs)])
    svc = next(w.body for w in result.writes if w.kind == "Service")
    assert svc["metadata"]["name"] == "far-default-web"
    assert svc["metadata"]["labels"][f"{P}/import-source"] == "k8s-service"
    assert svc["metadata"]["annotations"] == {
        f"{P}/cloudy-type": "kubernetes",
        f"{P}/source": "far/default/web",
    }


def test_ipv6_gets_its_own_slice() -> None:
    result = plan([publisher("a", entry("syncthing", "2001:db8::1")), *SYNC[:1]])
    slices = {w.name: w.body for w in result.writes if w.kind == "EndpointSlice"}
    assert set(slices) == {"syncthing-p8384", "syncthing-p8384-v6"}
    assert slices["syncthing-p8384-v6"]["addressType"] == "IPv6"


def user_service(name: str, labels: dict | None = None) -> ServiceInfo:
    return ServiceInfo("cloudy", name, "u1", "ClusterIP", (), None, labels or {}, {}, ())


@pytest.mark.parametrize(
    "labels",
    [
        pytest.param({}, id="no-marker"),
        pytest.param({f"{P}/imported-by": "far"}, id="other-clusters-marker"),
    ],
)
def test_a_service_we_do_not_own_is_refused_never_touched(labels: dict) -> None:
    result = plan(SYNC, services={"cloudy/syncthing": user_service("syncthing", labels)})
    assert result.refused == ("syncthing",)
    assert all(w.name not in ("syncthing", "syncthing-p8384") for w in result.writes)
    assert result.counts["services"] == 1


def test_two_sources_one_name_first_sorted_wins() -> None:
    clash = entry("kubernetes", "192.0.2.30", "80", txt="k8s=syncthing/x/y/80")
    plain = entry("syncthing-x-y", "192.0.2.31")
    result = plan([publisher("f", clash), publisher("g", plain)])
    assert result.refused == ("syncthing-x-y",)
    svc = next(w.body for w in result.writes if w.kind == "Service")
    assert svc["metadata"]["labels"][f"{P}/import-source"] == "cloudy-type"


@pytest.mark.parametrize(
    ("self_node", "bridges", "synced", "writes"),
    [
        pytest.param(WRITER, None, True, True, id="writer-writes"),
        pytest.param(OTHER, None, True, False, id="other-bridge-writes-nothing"),
        pytest.param(WRITER, None, False, False, id="unsynced-writes-nothing"),
        pytest.param(WRITER, [], True, True, id="no-bridges-at-all-no-writer"),
        pytest.param(
            WRITER,
            bridge_members(**{n: "failed" for n in BRIDGES if n != WRITER}),
            True,
            False,
            id="minority-writes-nothing",
        ),
    ],
)
def test_one_writer_and_never_on_a_partial_view(
    self_node: str, bridges: list[Member] | None, synced: bool, writes: bool
) -> None:
    result = plan(SYNC, settings=cfg(self_node), synced=synced, bridges=bridges)
    if bridges == []:  # nobody is a verified bridge: nobody writes
        assert result.writer is None and result.writes == ()
        return
    assert bool(result.writes) == writes
    assert result.counts["services"] == 2  # still planned, for status
    if not writes:
        assert result.notes


def test_a_bridge_that_has_not_recorded_itself_is_no_candidate() -> None:
    unrecorded = {**NODES, WRITER: NodeInfo(WRITER, WRITER, {}, {}, NODES[WRITER].addresses, True)}
    result = plan_imports(
        [*bridge_members(), *SYNC],
        nodes=unrecorded,
        services={},
        slices={},
        settings=cfg(WRITER),
        synced=True,
    )
    others = [n for n in BRIDGES if n != WRITER]
    assert result.writer == rendezvous.rank(WRITER_KEY, others)[0]
    assert result.writes == () and "imports are written by" in result.notes[-1]


def test_a_bridge_the_majority_labelled_failed_is_no_candidate() -> None:
    judged = NODES[WRITER]
    labels = {**judged.labels, f"{P}/serf-status": "failed"}
    nodes = {**NODES, WRITER: NodeInfo(WRITER, WRITER, labels, judged.annotations,
                                       judged.addresses, True)}  # fmt: skip
    # The judged bridge's own agent may still see every peer alive (a cut link): it still
    # is no candidate, in its own eyes as in the others'.
    for me in BRIDGES:
        result = plan_imports(
            [*bridge_members(), *SYNC],
            nodes=nodes,
            services={},
            slices={},
            settings=cfg(me),
            synced=True,
        )
        others = [n for n in BRIDGES if n != WRITER]
        assert result.writer == rendezvous.rank(WRITER_KEY, others)[0]
        assert bool(result.writes) == (me == result.writer)


def test_no_members_read_writes_nothing() -> None:
    result = plan_imports([], nodes=NODES, services={}, slices={}, settings=cfg(), synced=True)
    assert result.writes == ()


def test_steady_state_is_zero_writes_and_changes_replace() -> None:
    services, slices = applied(plan(SYNC))
    assert plan(SYNC, services=services, slices=slices).writes == ()
    failed = [
        SYNC[0],
        publisher("b", *cloudy.decode_services(SYNC[1].tags["services"]), status="failed"),
    ]
    result = plan(failed, services=services, slices=slices)
    assert [w.describe() for w in result.writes] == [
        f"replace EndpointSlice cloudy/{dns1035(dns1035('Docker') + '-p2375')}",
        "replace EndpointSlice cloudy/syncthing-p8384",
    ]


def test_unpublished_objects_are_deleted_slices_first() -> None:
    services, slices = applied(plan(SYNC))
    result = plan(SYNC[:1], services=services, slices=slices)
    assert [w.describe() for w in result.writes] == [
        "replace EndpointSlice cloudy/syncthing-p8384",  # b's endpoint goes
        f"delete EndpointSlice cloudy/{dns1035(dns1035('Docker') + '-p2375')}",
        f"delete Service cloudy/{dns1035('Docker')}",
    ]


def test_replace_of_a_service_carries_version_and_cluster_ip() -> None:
    services, _ = applied(plan(SYNC[:1]))
    current = services["cloudy/syncthing"]
    changed = ServiceInfo(
        "cloudy",
        "syncthing",
        "u",
        "ClusterIP",
        (ServicePort("p1", 1, None, "TCP", 1),),
        None,
        current.labels,
        current.annotations,
        (),
        resource_version="7",
        cluster_ip="10.96.0.9",
    )
    result = plan(SYNC[:1], services={"cloudy/syncthing": changed})
    write = next(w for w in result.writes if w.kind == "Service")
    assert write.verb == "replace" and write.resource_version == "7"
    assert write.body["metadata"]["resourceVersion"] == "7"
    assert write.body["spec"]["clusterIP"] == "10.96.0.9"


def test_prune_deletes_only_ours() -> None:
    services, slices = applied(plan(SYNC))
    services["cloudy/user"] = user_service("user")
    result = plan_prune(services, slices, settings=cfg())
    assert {w.verb for w in result.writes} == {"delete"}
    assert "user" not in {w.name for w in result.writes}
    assert len(result.writes) == 4


ENTRIES = st.builds(
    entry,
    st.sampled_from(["syncthing", "Docker", "web_ui", "x"]),
    st.sampled_from(["192.0.2.1", "192.0.2.2", "2001:db8::5", "127.0.0.1"]),
    st.sampled_from(["80", "8384", "0"]),
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(ENTRIES, min_size=1, max_size=4), st.sampled_from(["alive", "failed", "left"])
        ),
        max_size=5,
    )
)
def test_plan_applied_to_its_own_result_is_a_noop(spec: list) -> None:
    pubs = [publisher(f"m{i}", *es, status=s) for i, (es, s) in enumerate(spec)]
    services, slices = applied(plan(pubs))
    assert plan(pubs, services=services, slices=slices).writes == ()
    assert all(w.verb == "delete" for w in plan([], services=services, slices=slices).writes)


@pytest.mark.parametrize(
    "prefix",
    [
        pytest.param(P, id="default"),
        pytest.param("a." * 40 + "io", id="longer-than-a-label-value"),
    ],
)
def test_managed_by_is_always_a_valid_label_value(prefix: str) -> None:
    from serfbridge.plan_imports import managed_by
    from serfbridge.plan_labels import is_label_value

    value = managed_by(cfg(prefix=prefix))
    assert is_label_value(value) and value


def strings(value: object) -> list[str]:
    """Every string in a JSON body, keys included."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings(k), *strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


HOSTILE_TEXT = st.text(max_size=40).filter(lambda t: "'" not in t)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.tuples(
            HOSTILE_TEXT, HOSTILE_TEXT, st.sampled_from(["192.0.2.1", "::1", "x"]), HOSTILE_TEXT
        ),
        max_size=6,
    ),
    st.text(max_size=60),
)
def test_hostile_gossip_is_data_never_an_error(rows: list, raw_tag: str) -> None:
    """Any entry text and any raw tag: the plan is made, every name is a valid DNS-1035
    label, every body is JSON text, and nothing is raised."""
    entries = [Entry(t, d, "h", ip, p, "mc", "") for t, d, ip, p in rows]
    pubs = [Member("raw", "192.0.2.9", 1, {"services": raw_tag}, "alive")]
    if entries:
        pubs.append(publisher("m", *entries))
    result = plan(pubs)
    for write in result.writes:
        assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", write.name.removesuffix("-v6"))
        assert all(text.encode("utf-8") for text in strings(write.body))  # no surrogates
    assert set(result.skipped) <= {"ip", "port", "decode"}
