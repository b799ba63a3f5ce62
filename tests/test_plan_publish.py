"""The to-serf planner: eligibility, placement, budget, ownership, partial views."""

from __future__ import annotations

import hashlib
import json

import pytest

from serfbridge import cloudy, cloudy_codec
from serfbridge.errors import ConfigError
from serfbridge.kubemodels import NodeInfo, ServiceInfo, ServicePort, SliceEndpoint, SliceInfo
from serfbridge.plan_publish import PublishSettings, plan_publish
from serfbridge.rpc.budget import encoded_tags_size
from serfbridge.rpc.models import Member
from serfbridge.selector import parse_selector

P = "serfbridge.io"
NODES = {
    n: NodeInfo(n, n, {}, {}, (("InternalIP", f"10.0.0.{n[-1]}"),), True)
    for n in ("k1", "k2", "k3")
}


def members(*down: str) -> list[Member]:
    return [
        Member(
            f"serf-{n}",
            f"10.0.0.{n[-1]}",
            7946,
            {"k8s": f"lab/{n}"},
            "failed" if n in down else "alive",
        )
        for n in NODES
    ]


def svc(
    name: str,
    *ports: tuple[int, int | None],
    type: str = "NodePort",
    ns: str = "default",
    annotations=None,
    labels=None,
    etp: str | None = None,
    lb_ips=(),
) -> ServiceInfo:
    return ServiceInfo(
        ns,
        name,
        name,
        type,
        tuple(ServicePort(f"p{p}", p, np, "TCP") for p, np in ports),
        etp,
        labels or {},
        annotations or {},
        tuple(lb_ips),
    )


def plan(
    services,
    self_node="k1",
    current=None,
    down=(),
    slices=None,
    nodes=None,
    allow_removal=True,
    **kw,
):
    settings = PublishSettings(
        self_node=self_node, cluster="lab", self_member=f"serf-{self_node}", **kw
    )
    return plan_publish(
        services={f"{s.namespace}/{s.name}": s for s in services},
        slices=slices or {},
        nodes=nodes or NODES,
        members=members(*down),
        current_tags=current or {},
        settings=settings,
        allow_removal=allow_removal,
    )


def publishers(services, **kw) -> dict[str, list[str]]:
    """Which nodes publish which (type, port), planning on every node."""
    result: dict[str, list[str]] = {}
    for n in NODES:
        if n in kw.get("down", ()):
            continue
        for e in plan(services, self_node=n, **kw).entries:
            result.setdefault(e.port, []).append(n)
    return result


def test_two_port_nodeport_is_published_by_exactly_two_of_three_nodes() -> None:
    placed = publishers([svc("web", (80, 30080), (443, 30443))])
    assert sorted(placed) == ["30080", "30443"]
    assert all(len(nodes) == 2 for nodes in placed.values())


def test_entry_fields_and_ownership() -> None:
    p = plan([svc("web", (80, 30080))], self_node=publishers([svc("web", (80, 30080))])["30080"][0])
    [entry] = p.entries
    assert entry.type == "kubernetes" and entry.description == "web"
    assert entry.port == "30080" and entry.microcloud == "lab"
    assert entry.txt == "k8s=lab/default/web/80"
    assert entry.ip.startswith("10.0.0.") and entry.host.endswith(".guifi.local")
    assert p.tags["k8s"].startswith("lab/k")


@pytest.mark.parametrize(
    "service",
    [
        pytest.param(svc("c", (80, None), type="ClusterIP"), id="clusterip"),
        pytest.param(svc("e", type="ExternalName"), id="externalname"),
        pytest.param(svc("n", (80, 30080), annotations={f"{P}/publish": "false"}), id="opt-out"),
    ],
)
def test_never_published(service: ServiceInfo) -> None:
    assert publishers([service]) == {}


def test_portless_nodeport_is_reported_once_not_published_with_port_0() -> None:
    plans = [plan([svc("empty", type="NodePort")], self_node=n) for n in NODES]
    assert all(p.entries == () for p in plans)
    assert [lo.reason for p in plans for lo in p.left_out] == ["no ports"]  # one reporter


def test_opt_in_when_default_is_off() -> None:
    services = [svc("a", (80, 30001)), svc("b", (80, 30002), annotations={f"{P}/publish": "true"})]
    assert sorted(publishers(services, publish_default=False)) == ["30002"]


def test_namespace_and_selector_filters() -> None:
    services = [
        svc("a", (80, 30001), ns="x", labels={"tier": "web"}),
        svc("b", (80, 30002), ns="y", labels={"tier": "db"}),
        svc("c", (80, 30003), ns="kube-system"),
    ]
    assert sorted(publishers(services, namespaces=frozenset({"x", "y"}))) == ["30001", "30002"]
    assert sorted(publishers(services, exclude_namespaces=frozenset({"kube-system"}))) == [
        "30001",
        "30002",
    ]
    assert sorted(publishers(services, selector="tier=web")) == ["30001"]
    assert sorted(publishers(services, selector="tier,tier!=web")) == ["30002"]


def test_bad_selector_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_selector("a in (b)")


def test_external_traffic_policy_local_uses_only_nodes_with_ready_endpoints() -> None:
    service = svc("loc", (80, 30080), etp="Local")
    slices = {
        "default/loc-1": SliceInfo(
            "default",
            "loc-1",
            "loc",
            (SliceEndpoint(("10.1.0.1",), "k3", True), SliceEndpoint(("10.1.0.2",), "k2", False)),
            (),
        )
    }
    assert publishers([service], slices=slices) == {"30080": ["k3"]}


def test_load_balancer_ingress_ip_and_service_port() -> None:
    service = svc("lb", (443, 31443), type="LoadBalancer", lb_ips=("192.0.2.10",))
    entries = [e for n in NODES for e in plan([service], self_node=n).entries]
    assert {(e.ip, e.port) for e in entries} == {("192.0.2.10", "443")}


def test_failed_node_entries_move_to_the_next_ranked_node() -> None:
    service = [svc("web", (80, 30080))]
    before = publishers(service)["30080"]
    after = publishers(service, down=(before[0],))["30080"]
    assert before[0] not in after and before[1] in after and len(after) == 2


def test_foreign_entries_and_other_clusters_are_kept_in_order() -> None:
    serf = cloudy.Entry(
        "serf", "SERF_instance_running", "k1.guifi.local", "10.0.0.1", "5000", "demo", ""
    )
    other = cloudy.Entry(
        "kubernetes", "x", "k1", "10.0.0.1", "30999", "other", "k8s=other/default/x/80"
    )
    current = {"services": cloudy.encode_services([serf, other]), "role": "web"}
    service = [svc("web", (80, 30080))]
    node = publishers(service)["30080"][0]
    p = plan(service, self_node=node, current=current)
    listed = cloudy.decode_services(p.tags["services"])
    assert listed[:2] == [serf, other] and len(listed) == 3
    assert p.tags["role"] == "web"


def test_no_change_when_already_published() -> None:
    service = [svc("web", (80, 30080))]
    node = publishers(service)["30080"][0]
    first = plan(service, self_node=node)
    second = plan(service, self_node=node, current=first.tags)
    assert not first.change.noop and second.change.noop


def test_budget_is_never_exceeded_and_overflow_is_reported_deterministically() -> None:
    services = [
        svc(f"app-{i:02d}", (80, 30000 + i), annotations={f"{P}/priority": "5"} if i == 39 else {})
        for i in range(40)
    ]
    plans = {n: plan(services, self_node=n) for n in NODES}
    copies: dict[str, int] = {}
    for n, p in plans.items():
        assert encoded_tags_size(p.tags) <= 512
        assert plan(services, self_node=n) == p  # deterministic
        for e in p.entries:
            copies[e.txt.split("/")[2]] = copies.get(e.txt.split("/")[2], 0) + 1
    left = [lo for p in plans.values() for lo in p.left_out]
    assert left and all("budget exceeded" in lo.reason for lo in left)
    assert len({(lo.service, lo.port) for lo in left}) == len(left)  # each reported once
    short = {s for s in (f"app-{i:02d}" for i in range(40)) if copies.get(s, 0) < 2}
    assert {lo.service for lo in left} == short
    assert copies["app-39"] == 2  # the high-priority one is placed first


def test_full_nodes_spill_over_to_the_next_ranked_ones() -> None:
    """Capacity grows with the cluster: 6 nodes publish more Services in full than 3."""

    def in_full(n_nodes: int) -> int:
        nodes = {
            f"k{i}": NodeInfo(f"k{i}", f"k{i}", {}, {}, (("InternalIP", f"10.0.1.{i}"),), True)
            for i in range(1, n_nodes + 1)
        }
        mems = [
            Member(f"serf-k{i}", f"10.0.1.{i}", 7946, {"k8s": f"lab/k{i}"}, "alive")
            for i in range(1, n_nodes + 1)
        ]
        best = 0
        for count in range(1, 60):
            names = [hashlib.sha1(str(j).encode()).hexdigest()[:10] for j in range(count)]
            services = {f"default/{n}": svc(n, (80, 30000 + j)) for j, n in enumerate(names)}
            settings = [
                PublishSettings(self_node=n, cluster="lab", self_member=f"serf-{n}") for n in nodes
            ]
            plans = [
                plan_publish(
                    services=services,
                    slices={},
                    nodes=nodes,
                    members=mems,
                    current_tags={},
                    settings=s,
                )
                for s in settings
            ]
            if any(p.left_out for p in plans):
                break
            assert sum(len(p.entries) for p in plans) == 2 * count
            best = count
        return best

    three, six = in_full(3), in_full(6)
    assert three >= 6 and six >= 1.6 * three


def test_partial_view_removes_nothing() -> None:
    service = [svc("web", (80, 30080))]
    node = publishers(service)["30080"][0]
    published = plan(service, self_node=node).tags
    p = plan([], self_node=node, current=published, allow_removal=False)  # Service not seen
    assert p.change.noop
    assert plan([], self_node=node, current=published).change.delete == ("services",)


def test_set_tags_annotation_and_owned_tags() -> None:
    annotations = {
        f"{P}/set-tags": json.dumps({"role": "edge", "k8s": "x/y"}),
        f"{P}/owned-tags": "role,old",
    }
    nodes = {
        **NODES,
        "k1": NodeInfo("k1", "k1", {}, annotations, (("InternalIP", "10.0.0.1"),), True),
    }
    p = plan([], current={"old": "1", "keep": "2"}, nodes=nodes)
    assert p.change.set_tags == {"role": "edge", "k8s": "lab/k1"}
    assert p.change.delete == ("old",)
    assert p.owned_tags == ("role",)
    assert any("reserved" in problem for problem in p.problems)


# --- issue 13: another member's data never fails our pass ---------------------------------

HOSTILE_FOREIGN = [
    pytest.param('{"s":"x","d":"it\\u0027s","m":"","i":"","p":"1","e":"","t":""}', id="quote"),
    pytest.param('{"s":"x","d":"\\ud800","m":"","i":"","p":"1","e":"","t":""}', id="surrogate"),
    pytest.param('{"s":"x","p":665,"d":null}', id="legacy-types"),
]


def _tag(*objects: str) -> str:
    import base64
    import bz2

    raw = ("[" + ",".join(objects) + "]\n").encode()
    return base64.b64encode(bz2.compress(raw, 9)).decode()


@pytest.mark.parametrize("foreign", HOSTILE_FOREIGN)
def test_a_hostile_foreign_entry_is_kept_byte_for_byte_and_never_fails_the_pass(foreign) -> None:
    """On our own node and on a peer's room: kept as it was, counted in the budget."""
    services = [svc("web", (80, 30080))]
    owner = publishers(services)["30080"][0]
    current = {"services": _tag(foreign)}
    p = plan(services, self_node=owner, current=current)
    written = p.change.set_tags["services"]
    text = cloudy_codec._unpack(written)
    assert text.startswith("[" + foreign + ",")  # exactly its bytes, first, then ours
    assert [e.port for e in p.entries] == ["30080"]
    assert p.budget_used == encoded_tags_size(p.tags) <= 512


def test_a_hostile_foreign_entry_on_a_peer_does_not_fail_our_placement() -> None:
    services = [svc("web", (80, 30080))]
    peers = members()
    peers[1] = peers[1]._replace(
        tags={**peers[1].tags, "services": _tag(HOSTILE_FOREIGN[0].values[0])}
    )
    settings = PublishSettings(self_node="k1", cluster="lab", self_member="serf-k1")
    p = plan_publish(
        services={"default/web": services[0]},
        slices={},
        nodes=NODES,
        members=peers,
        current_tags={},
        settings=settings,
    )
    assert p.left_out == ()
