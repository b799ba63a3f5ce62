"""Which nodes publish which entry: rendezvous order, bounded by every node's tag budget.

Each Service port wants ``replicas`` nodes. They are taken in rendezvous order for the
port's key, skipping a node whose tags would no longer fit in the limit, so that when
the first-ranked nodes are full the entry spills to the next ones instead of being lost.
Entries are placed best priority first, then by name. Every bridge runs this over the
same inputs (the Services, every eligible node's gossiped tags) and gets the same
answer, so no coordination is needed; a node's own entries never feed back into its
budget here (only its foreign entries and other tags do), so the result is stable.

A pass is cheap after a change because every answer is kept by value: port rankings by
(key, pool), and fit checks (a bzip2 each) in a tree per node room whose paths are the
lists of our entries tried there. One Service changed re-ranks only its ports and
re-checks only the nodes whose lists it changes; everything else is a lookup. The memos
change the cost, never the answer (``tests/test_placement_props.py``).

Whether a list fits is ``rpc.budget``'s rule (``budget.fits``); this module only decides
which lists to try, and remembers the answers.

Pure: data in, an assignment out; no clock, no I/O. Used by ``plan_publish``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from serfbridge import cloudy, rendezvous
from serfbridge.cloudy import Entry
from serfbridge.rpc import budget

#: A port tries at most this many nodes beyond its replicas: on a large, full cluster
#: every trial is a bzip2 compression, and a Raspberry Pi runs this on every pass.
EXTRA_TRIALS = 4


@dataclass(frozen=True)
class NodeRoom:
    """What a node's ``services`` tag must share its budget with."""

    base: Mapping[str, str]  # every other tag the node will carry
    foreign: tuple[Entry, ...]  # entries we do not own (Cloudy's, other clusters')
    writable: bool = True  # False: its own list cannot be decoded, its bridge won't write


@dataclass(frozen=True)
class Want:
    """One Service port to place; ``entry_for(node)`` is its entry as that node shows it."""

    key: str  # <cluster>/<ns>/<svc>/<port>, the rendezvous key
    namespace: str
    service: str
    port: str
    priority: int
    replicas: int
    pool: tuple[str, ...]  # the eligible nodes
    entry_for: Callable[[str], Entry] = field(compare=False)


@dataclass(frozen=True)
class Shortfall:
    """A port with fewer copies than it wants; ``reporter`` is the node that reports it."""

    want: Want
    placed: tuple[str, ...]
    reporter: str


def place(
    wants: Sequence[Want],
    rooms: Mapping[str, NodeRoom],
    *,
    limit: int,
    memo: FitMemo | None = None,
) -> tuple[dict[str, list[Entry]], list[Shortfall]]:
    """Node -> its owned entries in placement order, and the ports left short.

    ``memo`` holds fit answers from earlier passes (the module's own by default; a fresh
    ``FitMemo()`` computes from scratch). It changes the cost, never the answer.
    """
    memo = _MEMO if memo is None else memo
    assigned: dict[str, list[Entry]] = {node: [] for node in rooms}
    states = {node: memo.root(room, limit) for node, room in rooms.items()}
    short: list[Shortfall] = []
    for want in sorted(wants, key=lambda w: (-w.priority, w.namespace, w.service, w.port)):
        ranking = _first_in(ranked(want.key, want.pool), rooms, count=want.replicas + EXTRA_TRIALS)
        placed: list[str] = []
        for node in ranking:
            if len(placed) == want.replicas:
                break
            entry = want.entry_for(node)
            after = memo.step(
                states[node], rooms[node], ours=assigned[node], entry=entry, limit=limit
            )
            if after is not None:
                states[node] = after
                assigned[node].append(entry)
                placed.append(node)
        if len(placed) < want.replicas and ranking:
            short.append(Shortfall(want, tuple(placed), ranking[0]))
    return assigned, short


def _first_in(ranking: Sequence[str], rooms: Mapping[str, NodeRoom], *, count: int) -> list[str]:
    """The first ``count`` of ``ranking`` that have a room, in order."""
    found: list[str] = []
    for node in ranking:
        if node in rooms:
            found.append(node)
            if len(found) == count:
                break
    return found


def fits(room: NodeRoom, ours: Sequence[Entry], *, limit: int) -> bool:
    """True when the room's tags, with ``ours`` after its foreign entries, fit ``limit``."""
    if not room.writable:
        return False
    entries = (*room.foreign, *ours)
    value = _encoded(entries, tuple(e.raw for e in entries))
    return budget.fits({**room.base, cloudy.SERVICES_TAG: value}, limit)


def fit_in_order(
    room: NodeRoom, entries: Sequence[Entry], *, limit: int, memo: FitMemo | None = None
) -> list[Entry]:
    """The entries that fit next to the room's foreign ones, taken in the order given."""
    memo = _MEMO if memo is None else memo
    kept: list[Entry] = []
    state = memo.root(room, limit)
    for entry in entries:
        after = memo.step(state, room, ours=kept, entry=entry, limit=limit)
        if after is not None:
            state = after
            kept.append(entry)
    return kept


@functools.lru_cache(maxsize=4096)
def ranked(key: str, pool: tuple[str, ...]) -> tuple[str, ...]:
    """``rendezvous.rank`` kept by value: a pass ranks every port over every node (50
    sha256 per port), and only a changed Service or pool changes the answer."""
    return tuple(rendezvous.rank(key, pool))


@functools.lru_cache(maxsize=2048)
def _encoded(entries: tuple[Entry, ...], raws: tuple[str, ...]) -> str:
    """bzip2 is the cost of a fit check. ``raws`` is part of the key: entries compare by
    their fields, but foreign ones are encoded from their exact text (``Entry.raw``),
    which two equal entries may spell differently."""
    del raws  # only a cache key; encode_services reads each entry's own raw
    return cloudy.encode_services(entries)


class _Step:
    """A node's budget after a given list of our entries: the answers for one more.

    ``after[(entry, raw)]`` is the step once that entry is appended, or None when it does
    not fit. A step is reached only through its path from the room's root, so the path
    (the room, then our entries in order) is the key, compared by value.
    """

    __slots__ = ("after",)

    def __init__(self) -> None:
        self.after: dict[tuple[Entry, str], _Step | None] = {}


_MISSING = _Step()  # a sentinel: not a real step


class FitMemo:
    """Fit answers by value, as a tree per node room: a pass that places the same entries
    on the same rooms only walks it; a changed Service adds steps only on the nodes whose
    lists it changes. At most ``max_steps`` steps are kept (then it starts again empty),
    so memory is bounded whatever the churn. Holds no clock and does no I/O."""

    def __init__(self, max_steps: int = 20_000) -> None:
        self.max_steps = max_steps
        self.steps = 0
        self._roots: dict[tuple[object, ...], _Step] = {}

    def clear(self) -> None:
        self._roots.clear()
        self.steps = 0

    def root(self, room: NodeRoom, limit: int) -> _Step | None:
        """The step for ``room`` with none of our entries; None when it takes nothing."""
        if not room.writable:
            return None
        key = (limit, tuple(sorted(room.base.items())), tuple((e, e.raw) for e in room.foreign))
        found = self._roots.get(key)
        if found is None:
            found = self._roots[key] = self._new()
        return found

    def step(
        self,
        state: _Step | None,
        room: NodeRoom,
        *,
        ours: Sequence[Entry],
        entry: Entry,
        limit: int,
    ) -> _Step | None:
        """The step after appending ``entry`` to ``ours`` (reached as ``state``), or None
        when it does not fit."""
        if state is None:
            return None
        key = (entry, entry.raw)
        found = state.after.get(key, _MISSING)
        if found is _MISSING:
            found = state.after[key] = (
                self._new() if fits(room, [*ours, entry], limit=limit) else None
            )
        return found

    def _new(self) -> _Step:
        if self.steps >= self.max_steps:  # detached steps stay valid for this pass
            self.clear()
        self.steps += 1
        return _Step()


_MEMO = FitMemo()


def forget() -> None:
    """Drop every memo placement keeps (benchmarks and tests use it: from scratch)."""
    _MEMO.clear()
    ranked.cache_clear()
    _encoded.cache_clear()
