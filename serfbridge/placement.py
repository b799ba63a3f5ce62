"""Which nodes publish which entry: rendezvous order, bounded by every node's tag budget.

Each Service port wants ``replicas`` nodes. They are taken in rendezvous order for the
port's key, skipping a node whose tags would no longer fit in the limit, so that when
the first-ranked nodes are full the entry spills to the next ones instead of being lost.
Entries are placed best priority first, then by name. Every bridge runs this over the
same inputs (the Services, every eligible node's gossiped tags) and gets the same
answer, so no coordination is needed; a node's own entries never feed back into its
budget here (only its foreign entries and other tags do), so the result is stable.

Pure: data in, an assignment out. Used by ``plan_publish``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from serfbridge import cloudy, rendezvous
from serfbridge.cloudy import Entry
from serfbridge.rpc.budget import encoded_tags_size

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
    wants: Sequence[Want], rooms: Mapping[str, NodeRoom], limit: int
) -> tuple[dict[str, list[Entry]], list[Shortfall]]:
    """Node -> its owned entries in placement order, and the ports left short."""
    assigned: dict[str, list[Entry]] = {node: [] for node in rooms}
    short: list[Shortfall] = []
    for want in sorted(wants, key=lambda w: (-w.priority, w.namespace, w.service, w.port)):
        ranking = [n for n in rendezvous.rank(want.key, want.pool) if n in rooms]
        placed: list[str] = []
        for node in ranking[: want.replicas + EXTRA_TRIALS]:
            if len(placed) == want.replicas:
                break
            entry = want.entry_for(node)
            if fits(rooms[node], [*assigned[node], entry], limit):
                assigned[node].append(entry)
                placed.append(node)
        if len(placed) < want.replicas and ranking:
            short.append(Shortfall(want, tuple(placed), ranking[0]))
    return assigned, short


def fits(room: NodeRoom, ours: Sequence[Entry], limit: int) -> bool:
    """True when the room's tags, with ``ours`` after its foreign entries, fit ``limit``."""
    if not room.writable:
        return False
    entries = (*room.foreign, *ours)
    value = _encoded(entries, tuple(e.raw for e in entries))
    return encoded_tags_size({**room.base, cloudy.SERVICES_TAG: value}) <= limit


@functools.lru_cache(maxsize=2048)
def _encoded(entries: tuple[Entry, ...], raws: tuple[str, ...]) -> str:
    """bzip2 is the cost of placement; every pass of every bridge tries the same lists
    again while nothing changes, so the steady state costs almost nothing. ``raws`` is
    part of the key: entries compare by their fields, but foreign ones are encoded from
    their exact text (``Entry.raw``), which two equal entries may spell differently."""
    del raws  # only a cache key; encode_services reads each entry's own raw
    return cloudy.encode_services(entries)
