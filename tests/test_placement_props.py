"""Placement's memos change its cost, never its answer: incremental == from scratch.

Random worlds go through random changes (a Service added, removed, re-prioritised, a
node's other tags or foreign entries changed, a pool shrunk). After every change the
memoized path (memos kept from the previous steps) must give exactly what a computation
from scratch gives: ``reference_place`` below is the placement algorithm without any
memo (rendezvous ranks and bzip2 encodings computed afresh for every trial), and for
whole plans ``plan_publish`` is run again after ``forget_memos``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from serfbridge import cloudy, placement, rendezvous
from serfbridge.cloudy import Entry
from serfbridge.kubemodels import NodeInfo, ServiceInfo, ServicePort
from serfbridge.placement import FitMemo, NodeRoom, Shortfall, Want
from serfbridge.plan_publish import PublishPlan, PublishSettings, forget_memos, plan_publish
from serfbridge.rpc.budget import encoded_tags_size
from serfbridge.rpc.models import Member

NODES = tuple(f"n{i}" for i in range(1, 7))


def reference_fits(room: NodeRoom, ours: Sequence[Entry], limit: int) -> bool:
    if not room.writable:
        return False
    value = cloudy.encode_services([*room.foreign, *ours])
    return encoded_tags_size({**room.base, cloudy.SERVICES_TAG: value}) <= limit


def reference_place(
    wants: Sequence[Want], rooms: Mapping[str, NodeRoom], limit: int
) -> tuple[dict[str, list[Entry]], list[Shortfall]]:
    """The placement rule with no memo at all: the answer every pass must give."""
    assigned: dict[str, list[Entry]] = {node: [] for node in rooms}
    short: list[Shortfall] = []
    for want in sorted(wants, key=lambda w: (-w.priority, w.namespace, w.service, w.port)):
        ranking = [n for n in rendezvous.rank(want.key, want.pool) if n in rooms]
        placed: list[str] = []
        for node in ranking[: want.replicas + placement.EXTRA_TRIALS]:
            if len(placed) == want.replicas:
                break
            entry = want.entry_for(node)
            if reference_fits(rooms[node], [*assigned[node], entry], limit):
                assigned[node].append(entry)
                placed.append(node)
        if len(placed) < want.replicas and ranking:
            short.append(Shortfall(want, tuple(placed), ranking[0]))
    return assigned, short


def reference_fit_in_order(room: NodeRoom, entries: Sequence[Entry], limit: int) -> list[Entry]:
    kept: list[Entry] = []
    for entry in entries:
        if reference_fits(room, [*kept, entry], limit):
            kept.append(entry)
    return kept


# --- placement alone: random wants and rooms ---------------------------------------------


def entry_maker(key: str, port: int):  # type: ignore[no-untyped-def]
    def entry_for(node: str) -> Entry:
        return cloudy.make_entry(
            description=key.replace("/", "_"),
            type="kubernetes",
            port=port,
            host=f"{node}.guifi.local",
            ip="10.0.0.1",
            microcloud="lab",
            txt=f"k8s={key}",
        )

    return entry_for


def make_want(name: str, priority: int, replicas: int, pool: tuple[str, ...]) -> Want:
    key = f"lab/default/{name}/80"
    port = 30000 + sum(map(ord, name)) % 2000
    return Want(key, "default", name, "80", priority, replicas, pool, entry_maker(key, port))


FOREIGN_RAW = (
    '{"s":"serf","d":"SERF_instance_running_on_this_cloudy_node_for_a_while","m":"x.guifi.local","i":"10.0.0.9",'
    '"p":"5000","e":"lab","t":""}'
)


def foreign(n: int, spelled: bool) -> tuple[Entry, ...]:
    """``n`` foreign entries; ``spelled`` gives them a raw text (as decoded from a tag)."""
    entries = []
    for i in range(n):
        entry = cloudy.make_entry(
            description=f"cloudy_{i}",
            type="serf",
            port=5000 + i,
            host="x.guifi.local",
            ip="10.0.0.9",
            microcloud="lab",
        )
        entries.append(
            entry.with_raw(FOREIGN_RAW.replace("5000", str(5000 + i))) if spelled else entry
        )
    return tuple(entries)


rooms_st = st.dictionaries(
    st.sampled_from(NODES),
    st.builds(
        lambda extra, n, spelled, writable: NodeRoom(
            {"k8s": "lab/x", **({"role": "x" * extra} if extra else {})},
            foreign(n, spelled),
            writable,
        ),
        st.integers(0, 120),
        st.integers(0, 2),
        st.booleans(),
        st.sampled_from([True, True, True, False]),
    ),
    min_size=1,
)
want_st = st.builds(
    make_want,
    st.sampled_from([f"s{i}" for i in range(14)]),
    st.integers(0, 2),
    st.integers(1, 3),
    st.lists(st.sampled_from(NODES), min_size=1, unique=True).map(tuple),
)
change_st = st.one_of(
    st.tuples(st.just("add"), want_st),
    st.tuples(st.just("drop"), st.integers(0, 30)),
    st.tuples(st.just("room"), st.sampled_from(NODES), rooms_st),
    st.tuples(st.just("limit"), st.integers(250, 700)),
)


def apply_change(change, wants, rooms, limit):  # type: ignore[no-untyped-def]
    kind = change[0]
    if kind == "add":
        wants = [w for w in wants if w.key != change[1].key] + [change[1]]
    elif kind == "drop" and wants:
        wants = [w for i, w in enumerate(wants) if i != change[1] % len(wants)]
    elif kind == "room":
        donor = next(iter(change[2].values()))
        rooms = {**rooms, change[1]: donor}
    elif kind == "limit":
        limit = change[1]
    return wants, rooms, limit


def outcome(result):  # type: ignore[no-untyped-def]
    assigned, short = result
    return (
        {n: [(e, e.raw) for e in entries] for n, entries in assigned.items()},
        [(s.want.key, s.placed, s.reporter) for s in short],
    )


@settings(max_examples=60, deadline=None)
@given(
    wants=st.lists(want_st, max_size=14),
    rooms=rooms_st,
    limit=st.integers(250, 700),
    changes=st.lists(change_st, max_size=8),
    max_steps=st.sampled_from([3, 40, 100_000]),
)
def test_incremental_placement_equals_the_memo_free_rule(wants, rooms, limit, changes, max_steps):  # type: ignore[no-untyped-def]
    memo = FitMemo(max_steps=max_steps)  # tiny caps also exercise the start-again path
    for change in [("none",), *changes]:
        wants, rooms, limit = apply_change(change, wants, rooms, limit)
        incremental = placement.place(wants, rooms, limit=limit, memo=memo)
        assert outcome(incremental) == outcome(reference_place(wants, rooms, limit))
        assert memo.steps <= max(max_steps, 1)
        for node, room in rooms.items():  # plan_publish's last check, over a reordered list
            ours = list(reversed(incremental[0][node])) + (
                [wants[0].entry_for(node)] if wants else []
            )
            got = placement.fit_in_order(room, ours, limit=limit, memo=memo)
            assert [(e, e.raw) for e in got] == [
                (e, e.raw) for e in reference_fit_in_order(room, ours, limit)
            ]


# --- whole plans: plan_publish incrementally vs after forget_memos -----------------------


WORLD_NODES = {
    n: NodeInfo(n, n, {}, {}, (("InternalIP", f"10.0.0.{n[-1]}"),), True) for n in NODES[:5]
}


def member(n: str, cloudy_entries: int) -> Member:
    tags = {"k8s": f"lab/{n}"}
    if cloudy_entries:
        entries = [
            cloudy.make_entry(
                description=f"app_{i}",
                type="Docker",
                port=8000 + i,
                host=f"{n}.guifi.local",
                ip=f"10.0.0.{n[-1]}",
                microcloud="lab",
            )
            for i in range(cloudy_entries)
        ]
        tags[cloudy.SERVICES_TAG] = cloudy.encode_services(entries)
    return Member(f"serf-{n}", f"10.0.0.{n[-1]}", 7946, tags, "alive")


def service(name: str, ports: int, priority: int, replicas: int, ns: str) -> ServiceInfo:
    annotations = {"serfbridge.io/priority": str(priority), "serfbridge.io/replicas": str(replicas)}
    return ServiceInfo(
        ns,
        name,
        name,
        "NodePort",
        tuple(ServicePort(f"p{p}", 80 + p, 30000 + 7 * p + len(name), "TCP") for p in range(ports)),
        None,
        {},
        annotations,
        (),
    )


service_st = st.builds(
    service,
    st.sampled_from([f"svc{i}" for i in range(20)]),
    st.integers(1, 3),
    st.integers(0, 1),
    st.integers(1, 3),
    st.sampled_from(["default", "apps"]),
)
world_change_st = st.one_of(
    st.tuples(st.just("add"), service_st),
    st.tuples(st.just("drop"), st.integers(0, 40)),
    st.tuples(st.just("cloudy"), st.sampled_from(list(WORLD_NODES)), st.integers(0, 3)),
    st.tuples(st.just("down"), st.sampled_from(list(WORLD_NODES))),
)


def world_step(change, services, members):  # type: ignore[no-untyped-def]
    kind = change[0]
    if kind == "add":
        services = {**services, f"{change[1].namespace}/{change[1].name}": change[1]}
    elif kind == "drop" and services:
        drop = sorted(services)[change[1] % len(services)]
        services = {k: v for k, v in services.items() if k != drop}
    elif kind == "cloudy":
        members = {**members, change[1]: member(change[1], change[2])}
    elif kind == "down":
        m = members[change[1]]
        members = {
            **members,
            change[1]: m._replace(status="failed" if m.status == "alive" else "alive"),
        }
    return services, members


def plans(services, members) -> list[PublishPlan]:  # type: ignore[no-untyped-def]
    return [
        plan_publish(
            services=services,
            slices={},
            nodes=WORLD_NODES,
            members=list(members.values()),
            current_tags=members[n].tags,
            settings=PublishSettings(self_node=n, cluster="lab", self_member=f"serf-{n}"),
        )
        for n in WORLD_NODES
    ]


@settings(max_examples=25, deadline=None)
@given(
    start=st.lists(service_st, max_size=12),
    cloudy_entries=st.lists(st.integers(0, 3), min_size=5, max_size=5),
    changes=st.lists(world_change_st, min_size=1, max_size=6),
)
def test_plan_publish_after_changes_equals_a_fresh_computation(start, cloudy_entries, changes):  # type: ignore[no-untyped-def]
    services = {f"{s.namespace}/{s.name}": s for s in start}
    members = {n: member(n, c) for n, c in zip(WORLD_NODES, cloudy_entries, strict=True)}
    steps = []
    for change in [("none",), *changes]:
        services, members = world_step(change, services, members)
        steps.append((services, members))
    forget_memos()
    incremental = [plans(s, m) for s, m in steps]  # memos carried from step to step
    for (s, m), got in zip(steps, incremental, strict=True):
        forget_memos()
        assert got == plans(s, m)
