"""The to-k8s planner: matching, writers, the partition guard, ownership, hostile gossip."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serfbridge import rendezvous
from serfbridge.errors import ConfigError
from serfbridge.failure_hold import FailureHold
from serfbridge.kubemodels import NodeInfo
from serfbridge.matching import match_members
from serfbridge.plan_labels import (
    LabelSettings,
    desired_metadata,
    is_label_name,
    is_label_value,
    plan_labels,
)
from serfbridge.rpc.models import Member

P = "serfbridge.io"


def member(name: str, status: str = "alive", addr: str = "127.0.0.1", **tags: str) -> Member:
    return Member(name=name, addr=addr, port=7946, tags=tags, status=status)


def node(name: str, addr: str = "", labels=None, annotations=None) -> NodeInfo:
    return NodeInfo(
        name=name,
        uid=name,
        labels=labels or {},
        annotations=annotations or {},
        addresses=(("InternalIP", addr or f"10.0.0.{name[-1]}"),),
        ready=True,
    )


def recorded(name: str, **annotations: str) -> NodeInfo:
    """A Node on which its own bridge recorded its member (the steady state)."""
    own = {f"{P}/serf-member": f"serf-{name}", f"{P}/serf-recorded-by": name}
    return node(name, annotations={**own, **annotations})


NODES = {n: recorded(n) for n in ("k1", "k2", "k3")}


def cluster_members(**status: str) -> list[Member]:
    return [member(f"serf-{n}", status.get(n, "alive"), k8s=f"lab/{n}") for n in NODES]


def cfg(self_node: str = "k1", **kw) -> LabelSettings:
    return LabelSettings(self_node=self_node, cluster="lab", self_member=f"serf-{self_node}", **kw)


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        # The issue-13 rule: a k8s tag (or a name) alone is a claim anyone can gossip.
        pytest.param(member("x", k8s="lab/k2"), None, id="k8s-tag-alone-is-no-proof"),
        pytest.param(member("serf-k2", k8s="lab/k2"), "k2", id="by-own-record"),
        pytest.param(member("k3", k8s="other/k3"), None, id="other-cluster-left-alone"),
        pytest.param(member("x", addr="10.0.0.2"), "k2", id="by-address"),
        pytest.param(member("k3"), None, id="name-alone-is-no-proof"),
        pytest.param(member("cloudy-node"), None, id="cloudy-node-not-k8s"),
        pytest.param(member("x", k8s="lab/nope"), None, id="claims-unknown-node"),
    ],
)
def test_matching_order(m: Member, expected: str | None) -> None:
    matched = match_members([m], NODES, settings=cfg())
    assert ({n for n, mm in matched.items() if mm is m} or {None}) == {expected}


def test_alive_member_wins_over_a_failed_one_for_the_same_node() -> None:
    old = member("old", "failed", addr="10.0.0.2", k8s="lab/k2")
    new = member("new", "alive", addr="10.0.0.2", k8s="lab/k2")
    assert match_members([old, new], NODES, settings=cfg())["k2"] is new


def test_own_agent_is_authoritative_against_an_impostor() -> None:
    impostor = member("aaa", "alive", k8s="lab/k1", role="evil")
    mine = member("serf-k1", "alive")
    assert match_members([impostor, mine], NODES, settings=cfg())["k1"] is mine


def test_own_node_labels_and_annotations() -> None:
    members = cluster_members()
    members[0] = member("serf-k1", k8s="lab/k1", role="web", services="QlpoOTFB")
    plan = plan_labels(members, {**NODES, "k1": node("k1")}, settings=cfg())  # k1 not recorded yet
    [patch] = plan.patches
    assert patch.node == "k1" and patch.reason == "own node"
    assert patch.labels == {f"{P}/serf-status": "alive", f"{P}/tag.role": "web"}
    assert f"{P}/tag.services" not in patch.labels  # default --tag-allow
    assert f"{P}/tag.k8s" not in patch.labels  # "lab/k1" is not a label value
    assert json.loads(patch.annotations[f"{P}/serf-tags"])["services"] == "QlpoOTFB"
    assert patch.annotations[f"{P}/serf-member"] == "serf-k1"
    assert patch.annotations[f"{P}/serf-addr"] == "127.0.0.1:7946"
    assert patch.annotations[f"{P}/owned-labels"] == f"{P}/serf-status,{P}/tag.role"


def test_no_other_bridge_writes_an_alive_node() -> None:
    for bridge in NODES:
        patches = plan_labels(cluster_members(), NODES, settings=cfg(bridge)).patches
        assert [p.node for p in patches] == [bridge]


def test_failed_node_is_written_by_exactly_one_bridge() -> None:
    members = cluster_members(k3="failed")
    writers = [
        s
        for s in ("k1", "k2")
        if any(p.node == "k3" for p in plan_labels(members, NODES, settings=cfg(s)).patches)
    ]
    assert writers == rendezvous.rank("k3", ["k1", "k2"])[:1]
    plan = plan_labels(members, NODES, settings=cfg(writers[0]))
    patch = next(p for p in plan.patches if p.node == "k3")
    assert patch.labels[f"{P}/serf-status"] == "failed"
    assert "ranks first" in patch.reason


def test_partition_guard_blocks_every_label_in_a_minority_own_node_included() -> None:
    # Issue 14: the isolated node still reaches its API, but its own "alive" must not
    # fight the majority's verdict. (Before, k1 wrote its own Node here.)
    members = cluster_members(k2="failed", k3="failed")
    plan = plan_labels(members, NODES, settings=cfg("k1"))
    assert plan.patches == ()
    assert plan.notes and "partition guard: 1/3 Nodes alive" in plan.notes[0]


QUAD = {n: recorded(n) for n in ("k1", "k2", "k3", "k4")}


def labelled(status: dict[str, str]) -> dict[str, NodeInfo]:
    """QUAD with each Node's serf-status label as the API holds it."""
    return {
        n: NodeInfo(
            name=n,
            uid=n,
            labels={f"{P}/serf-status": status.get(n, "alive")},
            annotations={
                **info.annotations,
                f"{P}/serf-addr": "127.0.0.1:7946",
                f"{P}/serf-tags": json.dumps({"k8s": f"lab/{n}"}, separators=(",", ":")),
                f"{P}/owned-labels": f"{P}/serf-status",
            },
            addresses=info.addresses,
            ready=True,
        )
        for n, info in QUAD.items()
    }


def seen(**status: str) -> list[Member]:
    return [member(f"serf-{n}", status.get(n, "alive"), k8s=f"lab/{n}") for n in QUAD]


def writes(bridge: str, view: list[Member], api: dict[str, NodeInfo]) -> dict[str, str | None]:
    """Node -> the serf-status this bridge writes (None: other keys only)."""
    plan = plan_labels(view, api, settings=cfg(bridge))
    return {p.node: p.labels.get(f"{P}/serf-status") for p in plan.patches}


_K4_FIRST = rendezvous.rank("k4", ["k1", "k2", "k3"])[0]
assert rendezvous.rank("k2", ["k1", "k3", "k4"])[0] == "k4"  # the cut case below needs it


@pytest.mark.parametrize(
    ("bridge", "view", "api", "expected"),
    [
        # k4's mesh link is cut, its API link up: the three see k4 failed, k4 sees 1/4.
        pytest.param(
            "k4",
            seen(k1="failed", k2="failed", k3="failed"),
            labelled({}),
            {},
            id="cut-node-alone-writes-nothing",
        ),
        pytest.param(
            "k4",
            seen(k1="failed", k2="failed", k3="failed"),
            labelled({"k4": "failed"}),
            {},
            id="cut-node-does-not-undo-the-verdict",
        ),
        pytest.param(
            _K4_FIRST,
            seen(k4="failed"),
            labelled({}),
            {"k4": "failed"},
            id="majority-first-ranked-labels-it",
        ),
        pytest.param(
            _K4_FIRST,
            seen(k4="failed"),
            labelled({"k4": "failed"}),
            {},
            id="majority-verdict-written-once",
        ),
        # A two-against-two split: 2/4 is no majority, nobody writes anything.
        pytest.param("k1", seen(k3="failed", k4="failed"), labelled({}), {}, id="split-side-a"),
        pytest.param("k3", seen(k1="failed", k2="failed"), labelled({}), {}, id="split-side-b"),
        pytest.param(
            "k1",
            seen(k3="failed", k4="failed"),
            labelled({"k1": "failed"}),
            {},
            id="split-no-repair-even-of-own-node",
        ),
        # Behind the cut, k4's agent declares its peers failed one by one: with only k2
        # failed yet it sees 3/4 alive and passes the guard, and it ranks first for k2.
        # Judged failed by the majority, it writes for no one (CI caught it fighting the
        # majority's k2 over its label, 20 writes in 2 s, before this rule).
        pytest.param(
            "k4",
            seen(k2="failed"),
            labelled({"k4": "failed"}),
            {},
            id="cut-node-judged-failed-writes-for-no-one",
        ),
        # Lifeguard: behind the cut, k4 may still see its peers alive; the verdict stands.
        pytest.param(
            "k4",
            seen(),
            labelled({"k4": "failed"}),
            {},
            id="cut-node-seeing-all-alive-keeps-the-verdict",
        ),
        # The heal: the majority's first-ranked bridge clears its own verdict, once.
        pytest.param(
            _K4_FIRST,
            seen(),
            labelled({"k4": "failed"}),
            {"k4": "alive"},
            id="heal-majority-clears-the-verdict",
        ),
        pytest.param("k4", seen(), labelled({}), {}, id="healed-steady-no-writes"),
    ],
)
def test_partition_table(
    bridge: str, view: list[Member], api: dict[str, NodeInfo], expected: dict[str, str]
) -> None:
    assert writes(bridge, view, api) == expected


def test_heal_is_written_by_one_bridge_only() -> None:
    api = labelled({"k4": "failed"})
    got = {b: writes(b, seen(), api) for b in QUAD}
    assert got == {b: ({"k4": "alive"} if b == _K4_FIRST else {}) for b in QUAD}


def test_alone_the_own_bridge_clears_its_own_verdict() -> None:
    # No other bridge recorded itself (a one-bridge cluster): nobody else could clear it.
    api = {"k1": labelled({"k1": "left"})["k1"]}
    plan = plan_labels([member("serf-k1", k8s="lab/k1")], api, settings=cfg("k1"))
    assert [(p.node, p.reason, p.labels) for p in plan.patches] == [
        ("k1", "own node", {f"{P}/serf-status": "alive"})
    ]


def test_a_member_that_left_is_no_sign_of_a_partition() -> None:
    # 2 alive of 3 present (k4 said goodbye): still a majority, the failure is labelled.
    first = rendezvous.rank("k3", ["k1", "k2"])[0]
    plan = plan_labels(seen(k3="failed", k4="left"), labelled({}), settings=cfg(first))
    assert not any("partition guard" in n for n in plan.notes)
    assert {p.node: p.labels.get(f"{P}/serf-status") for p in plan.patches}["k3"] == "failed"


def test_labels_set_by_others_are_never_touched_and_only_owned_keys_removed() -> None:
    owned = f"{P}/serf-status,{P}/tag.gone,kubernetes.io/hostname"
    k1 = node(
        "k1",
        labels={
            f"{P}/serf-status": "alive",
            f"{P}/tag.gone": "x",
            f"{P}/tag.hand": "mine",
            "serf-ish": "foreign",
            "kubernetes.io/hostname": "k1",
        },
        annotations={f"{P}/owned-labels": owned, "note": "hand"},
    )
    nodes = {**NODES, "k1": k1}
    [patch] = plan_labels([member("serf-k1")], nodes, settings=cfg()).patches
    assert patch.labels == {f"{P}/tag.gone": None}  # hostname is not ours to remove
    assert set(patch.annotations) == {
        f"{P}/serf-member",
        f"{P}/serf-addr",
        f"{P}/serf-recorded-by",  # issue 13: who recorded the identity
        f"{P}/serf-tags",
        f"{P}/owned-labels",
    }


def test_unchanged_node_gives_no_patch() -> None:
    members = cluster_members()
    [patch] = plan_labels(members, {**NODES, "k1": node("k1")}, settings=cfg()).patches
    synced = node(
        "k1",
        labels={k: v for k, v in patch.labels.items() if v is not None},
        annotations={k: v for k, v in patch.annotations.items() if v is not None},
    )
    assert plan_labels(members, {**NODES, "k1": synced}, settings=cfg()).patches == ()


def test_vanished_member_gets_its_owned_keys_removed_by_one_bridge() -> None:
    owned = {f"{P}/owned-labels": f"{P}/serf-status", f"{P}/serf-member": "serf-k3"}
    nodes = {
        **NODES,
        "k3": node("k3", labels={f"{P}/serf-status": "failed", "x": "y"}, annotations=owned),
    }
    members = cluster_members()[:2]
    writer = rendezvous.rank("k3", ["k1", "k2"])[0]
    patch = next(
        p for p in plan_labels(members, nodes, settings=cfg(writer)).patches if p.node == "k3"
    )
    assert patch.labels == {f"{P}/serf-status": None}
    assert patch.annotations == {f"{P}/owned-labels": None, f"{P}/serf-member": None}


@pytest.mark.parametrize("prefix", ["Bad_Prefix", "x/y", "", "-a.b"])
def test_bad_prefix_is_a_config_error(prefix: str) -> None:
    with pytest.raises(ConfigError):
        LabelSettings(self_node="k1", prefix=prefix)


HOSTILE = [
    pytest.param("a/b", "v", id="slash-in-key"),
    pytest.param("a b", "v", id="space-in-key"),
    pytest.param("ключ", "v", id="unicode-key"),
    pytest.param("k", "x" * 300, id="300-byte-value"),
    pytest.param("kubernetes.io/role", "master", id="kubernetes-io-role"),
    pytest.param("node-role.kubernetes.io/master", "", id="node-role-master"),
    pytest.param("k", "a,b=c", id="comma-and-equals"),
    pytest.param("k", "v\udcff", id="undecodable-bytes"),
]


@pytest.mark.parametrize(("key", "value"), HOSTILE)
def test_hostile_tags_are_skipped_and_counted(key: str, value: str) -> None:
    skipped: Counter[str] = Counter()
    labels, annotations = desired_metadata(
        member("serf-k1", **{key: value}), cfg(), skipped=skipped
    )
    assert list(labels) == [f"{P}/serf-status"]
    assert sum(skipped.values()) == 1
    json.loads(annotations[f"{P}/serf-tags"])  # still recorded, as valid JSON


def test_sixty_tags_on_one_member() -> None:
    tags = {f"t{i}": f"v{i}" for i in range(60)}
    skipped: Counter[str] = Counter()
    labels, _ = desired_metadata(member("serf-k1", **tags), cfg(), skipped=skipped)
    assert len(labels) == 61 and not skipped


@settings(max_examples=300, deadline=None)
@given(
    tags=st.dictionaries(st.text(max_size=70), st.text(max_size=80), max_size=60),
    name=st.text(max_size=40),
    status=st.text(max_size=10),
)
def test_any_gossip_gives_only_valid_labels_inside_the_prefix(tags, name, status) -> None:
    hostile = Member(name=name, addr="127.0.0.1", port=1, tags=tags, status=status)
    plan = plan_labels(
        [hostile],
        {"k1": node("k1")},
        settings=LabelSettings(self_node="k1", cluster="lab", self_member=name),
    )
    for patch in plan.patches:
        for key, value in patch.labels.items():
            prefix, _, label_name = key.partition("/")
            assert prefix == P and is_label_name(label_name)
            assert value is None or is_label_value(value)
        for key, value in patch.annotations.items():
            assert key.startswith(f"{P}/")
            assert value is None or value.encode("utf-8")  # encodable for the API


def test_a_member_recorded_on_its_node_is_recognised_by_other_bridges() -> None:
    own_record = {f"{P}/serf-member": "cloudy-abc", f"{P}/serf-recorded-by": "k2"}
    nodes = {**NODES, "k2": node("k2", annotations=own_record)}
    stranger = member("cloudy-abc")  # no k8s tag, unmatched address and name
    assert match_members([stranger], nodes, settings=cfg())["k2"] is stranger
    other_cluster = member("cloudy-abc", k8s="other/k2")
    assert match_members([other_cluster], nodes, settings=cfg()) == {}


def test_a_recent_failure_is_held_back_until_it_settles() -> None:
    members = cluster_members(k3="failed")
    writer = rendezvous.rank("k3", ["k1", "k2"])[0]
    hold = FailureHold(5.0, now=100.0, first_seen={"serf-k3": 98.0})  # failed 2 s ago
    held = plan_labels(members, NODES, settings=cfg(writer), hold=hold)
    assert all(p.node != "k3" for p in held.patches)
    assert any("failed recently" in note for note in held.notes)
    settled = plan_labels(members, NODES, settings=cfg(writer))
    assert any(p.node == "k3" for p in settled.patches)


@pytest.mark.parametrize(
    ("first_seen", "held", "recheck_at", "kept"),
    [
        pytest.param({"serf-k3": 98.0}, True, 103.0, {"serf-k3": 98.0}, id="failed-2s-ago"),
        pytest.param({}, True, 105.0, {"serf-k3": 100.0}, id="first-seen-now"),
        pytest.param({"serf-k3": 94.0}, False, None, {"serf-k3": 94.0}, id="settled"),
        pytest.param(
            {"serf-k3": 98.0, "serf-k2": 90.0},
            True,
            103.0,
            {"serf-k3": 98.0},
            id="healed-forgotten",
        ),
    ],
)
def test_the_failure_hold_is_data_in_and_out(
    first_seen: dict[str, float], held: bool, recheck_at: float | None, kept: dict[str, float]
) -> None:
    members = cluster_members(k3="failed")
    writer = rendezvous.rank("k3", ["k1", "k2"])[0]
    plan = plan_labels(
        members,
        NODES,
        settings=cfg(writer),
        hold=FailureHold(5.0, now=100.0, first_seen=first_seen),
    )
    assert any(p.node == "k3" for p in plan.patches) is not held
    assert plan.recheck_at == recheck_at
    assert dict(plan.hold.first_seen) == kept
    assert (plan.hold.seconds, plan.hold.now) == (5.0, 100.0)


def test_a_one_shot_caller_holds_nothing_back() -> None:
    members = cluster_members(k3="failed")
    writer = rendezvous.rank("k3", ["k1", "k2"])[0]
    plan = plan_labels(members, NODES, settings=cfg(writer), hold=FailureHold.one_shot(now=100.0))
    assert any(p.node == "k3" for p in plan.patches)
    assert plan.recheck_at is None
