"""Placement (placement.py): which nodes publish which Service port, as named cases.

Each port wants ``replicas`` nodes, taken in rendezvous order and skipping a node its
entry does not fit on (then it spills to the next), best priority first. Budgets here
are set in entries (``limit_for(n)``: room for exactly ``n`` of our entries next to the
room's other tags), so each case reads as "room for one" or "full". The memos are
``tests/test_placement_props.py``'s subject; these cases run with a fresh ``FitMemo``.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from serfbridge import cloudy, placement, rendezvous
from serfbridge.cloudy import Entry
from serfbridge.placement import FitMemo, NodeRoom, Shortfall, Want
from serfbridge.rpc.budget import encoded_tags_size

NODES = ("n1", "n2", "n3", "n4", "n5", "n6", "n7")
BASE = {"k8s": "lab/n"}
FULL = {"k8s": "lab/n", "role": "x" * 400}  # leaves no room for an entry in limit_for(2)


def entry(name: str, node: str, *, description: str = "") -> Entry:
    return cloudy.make_entry(
        description=description or name,
        type="kubernetes",
        port=30000 + sum(map(ord, name)) % 2000,
        host=f"{node}.guifi.local",
        ip="10.0.0.1",
        microcloud="lab",
        txt=f"k8s=lab/default/{name}/80",
    )


def want(name: str, *, replicas: int = 1, priority: int = 0, pool=NODES) -> Want:
    return Want(
        key=f"lab/default/{name}/80",
        namespace="default",
        service=name,
        port="80",
        priority=priority,
        replicas=replicas,
        pool=tuple(pool),
        entry_for=lambda node: entry(name, node),
    )


def size_of(count: int) -> int:
    """Bytes of ``BASE`` with ``count`` of our entries (``s0``, ``s1``, ...)."""
    ours = [entry(f"s{i}", "n1") for i in range(count)]
    return encoded_tags_size({**BASE, cloudy.SERVICES_TAG: cloudy.encode_services(ours)})


def limit_for(count: int) -> int:
    """A limit with room for ``count`` of our entries next to ``BASE``, not one more.

    Halfway to the next entry: bzip2 makes entries of other names a few bytes longer or
    shorter, and a whole entry is tens of bytes."""
    return (size_of(count) + size_of(count + 1)) // 2


def rank(name: str, pool=NODES) -> list[str]:
    return rendezvous.rank(f"lab/default/{name}/80", pool)


def rooms(**special: NodeRoom) -> dict[str, NodeRoom]:
    return {n: special.get(n, NodeRoom(BASE, ())) for n in NODES}


def placed(assigned: Mapping[str, list[Entry]]) -> dict[str, list[str]]:
    """Node -> the services whose entries it got (nodes with none left out)."""
    return {n: [e.description for e in es] for n, es in assigned.items() if es}


def run(
    wants: list[Want], node_rooms: Mapping[str, NodeRoom], limit: int
) -> tuple[dict[str, list[Entry]], list[Shortfall]]:
    return placement.place(wants, node_rooms, limit=limit, memo=FitMemo())


# --- where a port goes ---------------------------------------------------------------------


def test_a_port_goes_to_the_first_ranked_nodes_when_all_have_room() -> None:
    assigned, short = run([want("web", replicas=2)], rooms(), limit_for(4))
    assert placed(assigned) == {n: ["web"] for n in rank("web")[:2]}
    assert short == []


@pytest.mark.parametrize(
    "blocked",
    [
        pytest.param(NodeRoom(FULL, ()), id="full"),
        pytest.param(NodeRoom(BASE, (), writable=False), id="unwritable"),
    ],
)
def test_a_port_spills_past_a_node_it_cannot_go_on(blocked: NodeRoom) -> None:
    first, *rest = rank("web")
    assigned, short = run([want("web", replicas=2)], rooms(**{first: blocked}), limit_for(2))
    assert placed(assigned) == {n: ["web"] for n in rest[:2]}
    assert short == []


def test_a_pool_node_with_no_room_is_not_eligible() -> None:
    first, second, *_ = rank("web")
    node_rooms = {n: r for n, r in rooms().items() if n != first}
    assigned, _ = run([want("web")], node_rooms, limit_for(2))
    assert placed(assigned) == {second: ["web"]}


def test_higher_priority_takes_the_last_room_and_the_other_is_reported_short() -> None:
    only = ("n1",)
    wants = [want("low", pool=only), want("high", priority=5, pool=only)]
    assigned, short = run(wants, rooms(), limit_for(1))
    assert placed(assigned) == {"n1": ["high"]}
    assert [(s.want.service, s.placed, s.reporter) for s in short] == [("low", (), "n1")]


def test_equal_priority_is_placed_by_name() -> None:
    only = ("n1",)
    assigned, short = run([want("bbb", pool=only), want("aaa", pool=only)], rooms(), limit_for(1))
    assert placed(assigned) == {"n1": ["aaa"]}
    assert [s.want.service for s in short] == ["bbb"]


@pytest.mark.parametrize(
    ("replicas", "pool", "copies"),
    [
        pytest.param(3, ("n1", "n2"), 2, id="more-replicas-than-nodes"),
        pytest.param(2, ("n1",), 1, id="one-node"),
        pytest.param(1, (), 0, id="empty-pool"),
    ],
)
def test_a_small_pool_places_what_it_can(replicas: int, pool: tuple[str, ...], copies: int) -> None:
    assigned, short = run([want("web", replicas=replicas, pool=pool)], rooms(), limit_for(2))
    assert sum(len(es) for es in assigned.values()) == copies
    # An empty pool has nobody to report it; otherwise the first-ranked node does.
    assert [s.reporter for s in short] == rank("web", pool)[:1]


def test_a_port_tries_at_most_extra_trials_nodes_beyond_its_replicas() -> None:
    ranking = rank("web")
    tries = 1 + placement.EXTRA_TRIALS
    assert len(ranking) > tries, "the case needs a node beyond the trial bound"
    full = {n: NodeRoom(FULL, ()) for n in ranking[:tries]}
    assigned, short = run([want("web")], rooms(**full), limit_for(2))
    assert placed(assigned) == {}  # ranking[tries] had room but is never tried
    assert [(s.placed, s.reporter) for s in short] == [((), ranking[0])]


# --- fit -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("room", "count", "limit", "fits"),
    [
        pytest.param(NodeRoom(BASE, ()), 2, size_of(2), True, id="exactly-at-the-limit"),
        pytest.param(NodeRoom(BASE, ()), 2, size_of(2) - 1, False, id="one-byte-over"),
        pytest.param(NodeRoom(BASE, ()), 0, size_of(0), True, id="nothing-of-ours"),
        pytest.param(NodeRoom(FULL, ()), 1, limit_for(2), False, id="other-tags-fill-it"),
        pytest.param(NodeRoom(BASE, (), writable=False), 0, 65535, False, id="unwritable"),
    ],
)
def test_fits(room: NodeRoom, count: int, limit: int, fits: bool) -> None:
    ours = [entry(f"s{i}", "n1") for i in range(count)]
    assert placement.fits(room, ours, limit=limit) is fits


def test_foreign_entries_count_against_the_budget() -> None:
    cloudy_own = (cloudy.make_entry(description="s0", type="serf", port=5000),)
    ours = [entry("s1", "n1")]
    assert placement.fits(NodeRoom(BASE, ()), ours, limit=limit_for(1))
    assert not placement.fits(NodeRoom(BASE, cloudy_own), ours, limit=limit_for(1))


def test_fit_in_order_skips_what_does_not_fit_and_keeps_going() -> None:
    big = entry("big", "n1", description="b" * 300)
    small = [entry(f"s{i}", "n1") for i in range(3)]
    kept = placement.fit_in_order(
        NodeRoom(BASE, ()), [small[0], big, small[1], small[2]], limit=limit_for(2), memo=FitMemo()
    )
    assert kept == small[:2]
