"""The identity rule: which member is which Node (matching.py), as tables of named cases."""

from __future__ import annotations

import pytest

from serfbridge import matching, rendezvous
from serfbridge.kubemodels import NodeInfo
from serfbridge.plan_labels import UNVERIFIED, LabelSettings, plan_labels
from serfbridge.rpc.models import Member

P = "serfbridge.io"


def m(name: str, status: str = "alive", addr: str = "192.0.2.9", port: int = 7946, **tags: str):
    return Member(name=name, addr=addr, port=port, tags=tags, status=status)


def node(name: str, ip: str, record: tuple[str, str, str] | None = None) -> NodeInfo:
    """``record`` = (member, ip:port, recorded-by)."""
    annotations = {}
    if record is not None:
        member, addr, by = record
        annotations = {f"{P}/serf-member": member, f"{P}/serf-recorded-by": by}
        if addr:
            annotations[f"{P}/serf-addr"] = addr
        if not by:
            del annotations[f"{P}/serf-recorded-by"]  # a record older than the key
    return NodeInfo(name, name, {}, annotations, (("InternalIP", ip), ("Hostname", name)), True)


# Cloudy's init script names members <HostID>-<date +%N>-<hostname>-<IP>:5000: a new name
# at every restart, in no useful order.
OLD = "0a1b2c-912345678-pi-10.1.0.2:5000"
NEW = "0a1b2c-012345678-pi-10.1.0.2:5000"

CASES = [
    pytest.param(
        [m("aaa-impostor", k8s="lab/k2"), m("serf-k2", k8s="lab/k2")],
        {"k2": node("k2", "10.0.0.2", ("serf-k2", "", "k2"))},
        {"k2": ("serf-k2", "own record")},
        ("aaa-impostor",),
        id="impostor-sorting-first-is-ignored",
    ),
    pytest.param(
        [m("aaa-impostor", k8s="lab/k2"), m("serf-k2", "failed", k8s="lab/k2")],
        {"k2": node("k2", "10.0.0.2", ("serf-k2", "", "k2"))},
        {"k2": ("serf-k2", "own record")},
        ("aaa-impostor",),
        id="real-member-stopped-node-follows-it-not-the-impostor",
    ),
    pytest.param(
        [m("aaa-impostor", "left", k8s="lab/k2"), m("serf-k2", "failed", k8s="lab/k2")],
        {"k2": node("k2", "10.0.0.2", ("serf-k2", "", "k2"))},
        {"k2": ("serf-k2", "own record")},
        ("aaa-impostor",),
        id="impostor-stopped-too-still-nothing-of-it-lands",
    ),
    pytest.param(
        [m("aaa-impostor", k8s="lab/k2")],
        {"k2": node("k2", "10.0.0.2")},
        {},
        ("aaa-impostor",),
        id="claim-for-a-node-with-no-record-and-no-address",
    ),
    pytest.param(
        [m("x", addr="10.0.0.2")],
        {"k2": node("k2", "10.0.0.2")},
        {"k2": ("x", "address")},
        (),
        id="never-had-a-bridge-matched-by-address",
    ),
    pytest.param(
        [m("x", addr="10.0.0.2")],
        {"k2": node("k2", "10.0.0.2"), "k3": node("k3", "10.0.0.2")},
        {},
        (),
        id="an-address-two-nodes-share-proves-nothing",
    ),
    pytest.param(
        [m("x", addr="10.0.0.2", k8s="other/k2")],
        {"k2": node("k2", "10.0.0.2")},
        {},
        (),
        id="member-of-another-cluster-is-never-ours",
    ),
    pytest.param(
        [m("k2")],
        {"k2": node("k2", "10.0.0.2")},
        {},
        (),
        id="a-name-alone-is-no-proof",
    ),
    pytest.param(
        [m("cloudy-abc")],
        {"k2": node("k2", "10.0.0.2", ("cloudy-abc", "", "k1"))},
        {},
        (),
        id="a-record-by-another-bridge-alone-is-no-proof",
    ),
    pytest.param(
        [m("cloudy-abc")],
        {"k2": node("k2", "10.0.0.2", ("cloudy-abc", "", ""))},
        {},
        (),
        id="a-record-from-before-recorded-by-alone-is-no-proof",
    ),
    pytest.param(
        [m(OLD, "failed", addr="10.1.0.2", port=5000), m(NEW, addr="10.1.0.2", port=5000)],
        {"k2": node("k2", "10.0.0.2", (OLD, "10.1.0.2:5000", "k2"))},
        {"k2": (NEW, "own address")},
        (),
        id="restart-new-name-at-the-recorded-address-takes-over",
    ),
    pytest.param(
        [m(OLD, "left", addr="10.1.0.2", port=5000), m(NEW, "failed", addr="10.1.0.2", port=5000)],
        {"k2": node("k2", "10.0.0.2", (NEW, "10.1.0.2:5000", "k2"))},
        {"k2": (NEW, "own record")},
        (),
        id="old-name-left-later-never-beats-the-recorded-newer-one",
    ),
    pytest.param(
        [m(OLD, "failed", addr="10.0.0.2", port=5000), m(NEW, "left", addr="10.0.0.2", port=5000)],
        {"k2": node("k2", "10.0.0.2", (NEW, "10.0.0.2:5000", "k1"))},
        {"k2": (NEW, "record")},
        (),
        id="no-bridge-the-writers-record-keeps-the-newer-member",
    ),
    pytest.param(
        [m(OLD, "failed", addr="10.0.0.2"), m(NEW, "left", addr="10.0.0.2")],
        {"k2": node("k2", "10.0.0.2")},
        {"k2": (OLD, "address")},
        (),
        id="no-bridge-no-record-best-status-then-name",
    ),
    pytest.param(
        [m("serf-k1", addr="10.0.0.2"), m("serf-k2", "failed", addr="10.0.0.9")],
        {
            "k1": node("k1", "10.0.0.1", ("serf-k1", "", "k1")),
            "k2": node("k2", "10.0.0.2", ("serf-k2", "", "k2")),
        },
        {"k1": ("serf-k1", "own agent"), "k2": ("serf-k2", "own record")},
        (),
        id="own-record-beats-an-address-elsewhere",
    ),
    pytest.param(
        [m("aaa", addr="10.0.0.1", k8s="lab/k1"), m("serf-k1", addr="127.0.0.1")],
        {"k1": node("k1", "10.0.0.1")},
        {"k1": ("serf-k1", "own agent")},
        ("aaa",),
        id="own-agent-is-authoritative-for-own-node",
    ),
    pytest.param(
        [m("y", addr="10.0.0.2", k8s="lab/k3")],
        {"k2": node("k2", "10.0.0.2"), "k3": node("k3", "10.0.0.3")},
        {"k2": ("y", "address")},
        ("y",),
        id="claim-naming-another-node-than-the-verified-one",
    ),
]


@pytest.mark.parametrize(("members", "nodes", "expected", "unverified"), CASES)
def test_identity_rule(members, nodes, expected, unverified) -> None:
    found = matching.match(
        members, nodes, cluster="lab", prefix=P, self_node="k1", self_member="serf-k1"
    )
    assert {n: (b.member.name, b.how) for n, b in found.bindings.items()} == expected
    assert found.unverified == unverified


def cfg(self_node: str) -> LabelSettings:
    return LabelSettings(self_node=self_node, cluster="lab", self_member=f"serf-{self_node}")


def own_nodes(*names: str) -> dict[str, NodeInfo]:
    return {n: node(n, f"10.0.0.{n[-1]}", (f"serf-{n}", "", n)) for n in names}


def test_impostor_is_counted_and_noted_and_its_tags_never_land() -> None:
    impostor = m("aaa", k8s="lab/k3", role="evil")
    members = [impostor, *(m(f"serf-{n}", k8s=f"lab/{n}") for n in ("k1", "k2", "k3"))]
    members[3] = members[3]._replace(status="failed")
    nodes = own_nodes("k1", "k2", "k3")
    writer = rendezvous.rank("k3", ["k1", "k2"])[0]
    plan = plan_labels(members, nodes, settings=cfg(writer))
    [patch] = [p for p in plan.patches if p.node == "k3"]
    assert patch.labels == {f"{P}/serf-status": "failed"}
    assert "evil" not in str(patch.annotations)
    assert plan.skipped[UNVERIFIED] == 1
    assert any("'aaa'" in note for note in plan.notes)


def test_node_without_a_bridge_is_written_alive_by_one_bridge_which_records_itself() -> None:
    nodes = {**own_nodes("k1", "k2"), "k3": node("k3", "10.0.0.3")}
    members = [m("serf-k1", k8s="lab/k1"), m("serf-k2", k8s="lab/k2"), m(NEW, addr="10.0.0.3")]
    writers = []
    for bridge in ("k1", "k2"):
        for patch in plan_labels(members, nodes, settings=cfg(bridge)).patches:
            if patch.node == "k3":
                writers.append(bridge)
                assert patch.labels[f"{P}/serf-status"] == "alive"
                assert patch.annotations[f"{P}/serf-member"] == NEW
                assert patch.annotations[f"{P}/serf-recorded-by"] == bridge
    assert writers == rendezvous.rank("k3", ["k1", "k2"])[:1]


def test_a_restarted_agent_keeps_the_nodes_own_record() -> None:
    """A peer writing the new member of a Node with an own record keeps it the Node's own."""
    nodes = {
        **own_nodes("k1", "k2"),
        "k3": node("k3", "10.0.0.3", (OLD, "10.1.0.3:5000", "k3")),
    }
    members = [
        m("serf-k1", k8s="lab/k1"),
        m("serf-k2", k8s="lab/k2"),
        m(OLD, "failed", addr="10.1.0.3", port=5000),
        m(NEW, addr="10.1.0.3", port=5000),
    ]
    writer = rendezvous.rank("k3", ["k1", "k2"])[0]
    [patch] = [
        p for p in plan_labels(members, nodes, settings=cfg(writer)).patches if p.node == "k3"
    ]
    assert patch.annotations[f"{P}/serf-member"] == NEW
    assert f"{P}/serf-recorded-by" not in patch.annotations  # still "k3": unchanged


def test_a_bridge_that_has_not_recorded_itself_writes_for_no_one() -> None:
    """All bridges judge who may write from the API's records, so they agree."""
    nodes = {**own_nodes("k2"), "k1": node("k1", "10.0.0.1"), "k3": node("k3", "10.0.0.3")}
    members = [
        m("serf-k1", addr="10.0.0.1", k8s="lab/k1"),  # its bridge runs: it records itself
        m("serf-k2"),
        m("serf-k3", "failed", addr="10.0.0.3"),
    ]
    assert [p.node for p in plan_labels(members, nodes, settings=cfg("k1")).patches] == ["k1"]
    assert [p.node for p in plan_labels(members, nodes, settings=cfg("k2")).patches] == ["k2", "k3"]
