"""The applier (``bridge``) with fakes: it sends exactly the plan, counts what it sent,
writes nothing on a dry run or a partial view, and skips a conflict."""

from __future__ import annotations

import json

import pytest

from serfbridge import bridge, rendezvous
from serfbridge.config import Settings
from serfbridge.errors import KubeConflict, KubeUnavailable
from serfbridge.failure_hold import FailureHold
from serfbridge.kubemodels import NodeInfo, ServiceInfo, ServicePort
from serfbridge.plan_events import EventKey, EventPlan, PlannedEvent
from serfbridge.plan_labels import NodePatch
from serfbridge.rpc.models import Member

P = "serfbridge.io"
OWNED = f"{P}/owned-tags"


class FakeKubeWriter:
    """Records every patch and Event; ``conflicts``/``failing`` name what raises."""

    def __init__(self, *, conflicts=(), failing=()) -> None:
        self.patches: list[tuple[str, dict, dict]] = []
        self.events: list[tuple[str, str]] = []
        self.conflicts, self.failing = set(conflicts), set(failing)

    def patch_node(self, name, *, labels=None, annotations=None) -> None:
        if name in self.conflicts:
            raise KubeConflict(f"conflict: patch nodes {name}")
        self.patches.append((name, dict(labels or {}), dict(annotations or {})))

    def create_event(self, involved, *, reason, message, type="Warning") -> None:
        if involved.name in self.failing:
            raise KubeUnavailable("apiserver down")
        self.events.append((involved.name, message))

    @property
    def writes(self) -> int:
        return len(self.patches) + len(self.events)


class FakeTagsSink:
    """The agent's ``tags`` call, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict, list, dict]] = []

    def tags(self, set_tags, delete, *, current) -> dict:
        self.calls.append((dict(set_tags), list(delete), dict(current)))
        return {}


class FakeCache:
    """The parts of ``KubeCache`` the bridge uses: a snapshot, and write-through."""

    def __init__(self, nodes, *, synced=True) -> None:
        self._nodes, self.synced = dict(nodes), synced
        self.noted: list[tuple[str, dict, dict]] = []
        self.slice_version = "v1"

    def nodes(self):
        return dict(self._nodes)

    def services(self):
        return {}

    def endpoint_slices(self):
        return {}

    def note_patched(self, name, *, labels, annotations) -> None:
        self.noted.append((name, dict(labels), dict(annotations)))


def member(name: str, status: str = "alive", **tags: str) -> Member:
    return Member(name=name, addr="127.0.0.1", port=7946, tags=tags, status=status)


def node(name: str, **annotations: str) -> NodeInfo:
    return NodeInfo(name, name, {}, annotations, (("InternalIP", f"10.0.0.{name[-1]}"),), True)


def recorded(name: str, **annotations: str) -> NodeInfo:
    own = {f"{P}/serf-member": f"serf-{name}", f"{P}/serf-recorded-by": name}
    return node(name, **own, **annotations)


def settings(name: str = "k1") -> Settings:
    return Settings(node_name=name, cluster="lab", label_prefix=P)


def serf_view(name: str = "k1", **status: str) -> bridge.SerfView:
    members = tuple(
        member(f"serf-{n}", status.get(n, "alive"), k8s=f"lab/{n}") for n in ("k1", "k2", "k3")
    )
    return bridge.SerfView(members, f"serf-{name}", {})


RECORDED = {n: recorded(n) for n in ("k1", "k2", "k3")}
FRESH_K1 = {**RECORDED, "k1": node("k1")}  # k1's own bridge has not recorded itself yet
NOW = 1000.0


def one_shot() -> FailureHold:
    return FailureHold.one_shot(NOW)


# --- to-k8s ----------------------------------------------------------------------------


def test_label_pass_sends_exactly_the_plans_patches() -> None:
    kube = FakeKubeWriter()
    plan, writes = bridge.label_pass(
        serf_view(), bridge.KubeView(FRESH_K1), kube=kube, settings=settings(), hold=one_shot()
    )
    assert plan.patches, "the scenario must plan something"
    assert kube.patches == [(p.node, dict(p.labels), dict(p.annotations)) for p in plan.patches]
    assert writes == len(plan.patches) == kube.writes


@pytest.mark.parametrize(
    ("view", "dry_run", "writer"),
    [
        pytest.param(bridge.KubeView(FRESH_K1), True, True, id="dry-run"),
        pytest.param(bridge.KubeView(FRESH_K1), False, False, id="no-writer"),
        pytest.param(bridge.KubeView(FRESH_K1, synced=False), False, True, id="unsynced"),
    ],
)
def test_label_pass_writes_nothing(view, dry_run, writer) -> None:
    kube = FakeKubeWriter()
    plan, writes = bridge.label_pass(
        serf_view(),
        view,
        kube=kube if writer else None,
        settings=settings(),
        hold=one_shot(),
        dry_run=dry_run,
    )
    assert (writes, kube.writes) == (0, 0)
    assert bool(plan.patches) == view.synced  # a dry run still shows the plan


def test_a_conflict_is_skipped_and_the_rest_still_applied() -> None:
    kube = FakeKubeWriter(conflicts={"k1"})
    patches = [NodePatch("k1", {"a": "1"}, {}, "own node"), NodePatch("k2", {}, {"b": None}, "x")]
    cache = FakeCache(RECORDED)
    assert bridge.apply_node_patches(kube, patches, cache=cache) == 1
    assert kube.patches == [("k2", {}, {"b": None})]
    assert cache.noted == [("k2", {}, {"b": None})]  # only what was really sent


def test_a_recent_failure_is_held_until_it_settles() -> None:
    view = serf_view(k3="failed")
    writer = rendezvous.rank("k3", ["k1", "k2"])[0]
    held = FailureHold(5.0, NOW, {"serf-k3": NOW - 1})
    plan, _ = bridge.label_pass(
        view, bridge.KubeView(RECORDED), kube=FakeKubeWriter(), settings=settings(writer), hold=held
    )
    assert all(p.node != "k3" for p in plan.patches)
    settled = FailureHold(5.0, NOW, {"serf-k3": NOW - 6})
    plan, _ = bridge.label_pass(
        view,
        bridge.KubeView(RECORDED),
        kube=FakeKubeWriter(),
        settings=settings(writer),
        hold=settled,
    )
    assert any(p.node == "k3" for p in plan.patches)


# --- reading ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cache", "expected"),
    [
        pytest.param(None, bridge.KubeView(nodes={}, synced=False), id="no-cache"),
        pytest.param(FakeCache(RECORDED), bridge.KubeView(RECORDED), id="synced"),
        pytest.param(
            FakeCache(RECORDED, synced=False),
            bridge.KubeView(RECORDED, synced=False),
            id="unsynced-stays-whole",
        ),
    ],
)
def test_read_kube(cache, expected) -> None:
    assert bridge.read_kube(cache) == expected


# --- to-serf ---------------------------------------------------------------------------


def set_tags_node(**tags: str) -> NodeInfo:
    return recorded("k1", **{f"{P}/set-tags": json.dumps(tags)})


def test_owned_tags_are_in_the_plan_and_applied_once() -> None:
    view = bridge.KubeView({**RECORDED, "k1": set_tags_node(role="web")})
    shown, _ = bridge.publish_pass(
        FakeTagsSink(),
        serf_view(),
        kube_view=view,
        kube=FakeKubeWriter(),
        settings=settings(),
        dry_run=True,
    )
    assert shown.owned == NodePatch("k1", {}, {OWNED: "role"}, "owned tags")
    kube, sink = FakeKubeWriter(), FakeTagsSink()
    applied, writes = bridge.publish_pass(
        sink, serf_view(), kube_view=view, kube=kube, settings=settings()
    )
    assert applied.owned == shown.owned
    assert kube.patches == [("k1", {}, {OWNED: "role"})]
    assert writes == len(sink.calls) == 1
    assert sink.calls[0][0]["role"] == "web"


@pytest.mark.parametrize(
    ("node_", "synced"),
    [
        pytest.param(set_tags_node(role="web"), False, id="unsynced"),
        pytest.param(
            recorded("k1", **{f"{P}/set-tags": '{"role": "web"}', OWNED: "role"}),
            True,
            id="already-recorded",
        ),
    ],
)
def test_owned_tags_not_written(node_, synced) -> None:
    kube = FakeKubeWriter()
    view = bridge.KubeView({**RECORDED, "k1": node_}, synced=synced)
    applied, _ = bridge.publish_pass(
        FakeTagsSink(), serf_view(), kube_view=view, kube=kube, settings=settings()
    )
    assert applied.owned is None
    assert kube.patches == []


def test_publish_dry_run_writes_nothing() -> None:
    kube, sink = FakeKubeWriter(), FakeTagsSink()
    view = bridge.KubeView({**RECORDED, "k1": set_tags_node(role="web")})
    planned, writes = bridge.publish_pass(
        sink,
        serf_view(),
        kube_view=view,
        kube=kube,
        settings=settings(),
        dry_run=True,
        reported=frozenset(),
    )
    assert not planned.change.noop and planned.owned is not None  # there was work to show
    assert (writes, kube.writes, sink.calls) == (0, 0, [])


def test_nothing_changed_is_no_tags_call() -> None:
    view = bridge.KubeView({**RECORDED, "k1": set_tags_node(role="web")})
    first, sink = FakeTagsSink(), FakeTagsSink()
    planned, _ = bridge.publish_pass(
        first, serf_view(), kube_view=view, kube=None, settings=settings(), dry_run=True
    )
    steady = bridge.SerfView(serf_view().members, "serf-k1", dict(planned.plan.tags))
    again, writes = bridge.publish_pass(
        sink, steady, kube_view=view, kube=None, settings=settings()
    )
    assert again.change.noop and (writes, sink.calls) == (0, [])


# --- Events ----------------------------------------------------------------------------


def service(name: str) -> ServiceInfo:
    return ServiceInfo(
        "default", name, name, "NodePort", (ServicePort("", 80, 30080, "TCP"),), None, {}, {}, ()
    )


def event(name: str) -> PlannedEvent:
    key = EventKey("default", name, name, "budget exceeded")
    return PlannedEvent(key, service(name), "NotPublished", f"{name} left out")


def test_apply_events_keeps_a_failed_post_out_of_sent() -> None:
    plan = EventPlan((event("a"), event("b")), frozenset({event("a").key, event("b").key}))
    kube = FakeKubeWriter(failing={"a"})
    applied = bridge.apply_events(kube, plan)
    assert kube.events == [("b", "b left out")]
    assert applied.sent == {event("b").key}
    assert applied.events == plan.events


@pytest.mark.parametrize(
    ("reported", "synced", "expected_sent"),
    [
        pytest.param(None, True, frozenset(), id="no-ledger-no-events"),
        pytest.param(frozenset({event("a").key}), False, {event("a").key}, id="unsynced-keeps"),
        pytest.param(frozenset({event("a").key}), True, frozenset(), id="nothing-left-out-clears"),
    ],
)
def test_publish_pass_event_state(reported, synced, expected_sent) -> None:
    kube = FakeKubeWriter()
    view = bridge.KubeView(RECORDED, services={"default/a": service("a")}, synced=synced)
    applied, _ = bridge.publish_pass(
        FakeTagsSink(),
        serf_view(),
        kube_view=view,
        kube=kube,
        settings=settings(),
        reported=reported,
    )
    assert applied.events.events == () and kube.events == []
    assert applied.events.sent == expected_sent


def test_publish_pass_reports_left_out_once_and_retries_a_failed_post() -> None:
    """Through the whole pass: the plan shows the Events, the applier sends them, and the
    ``sent`` it hands back makes the next pass send only the one whose POST failed."""
    tight = Settings(node_name="k1", cluster="lab", label_prefix=P, tag_limit=120)
    view = bridge.KubeView(RECORDED, services={f"default/s{i}": service(f"s{i}") for i in range(6)})
    shown, _ = bridge.publish_pass(
        FakeTagsSink(),
        serf_view(),
        kube_view=view,
        kube=None,
        settings=tight,
        dry_run=True,
        reported=frozenset(),
    )
    names = [e.service.name for e in shown.events.events]
    assert len(names) >= 2 and shown.events_created == len(names)
    kube = FakeKubeWriter(failing={names[0]})
    first, _ = bridge.publish_pass(
        FakeTagsSink(), serf_view(), kube_view=view, kube=kube, settings=tight, reported=frozenset()
    )
    assert [n for n, _ in kube.events] == names[1:] and first.events_created == len(names) - 1
    kube.failing.clear()
    second, _ = bridge.publish_pass(
        FakeTagsSink(),
        serf_view(),
        kube_view=view,
        kube=kube,
        settings=tight,
        reported=first.events.sent,
    )
    assert [n for n, _ in kube.events] == [*names[1:], names[0]]
    assert second.events_created == 1 and second.events.sent == shown.events.sent
