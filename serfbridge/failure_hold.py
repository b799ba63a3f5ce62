"""The failure hold as data: which failed members are too freshly failed to act on.

When a partition starts, peers are declared failed one by one over a few seconds, and a
failure label written in that window would slip past the partition guard. So a failed
member is acted on only once it has been seen failed for ``seconds``. Pure: the caller
passes the clock (``now``) and what it remembered (``first_seen``), and keeps the
``FailureHold`` it gets back for its next pass. The daemon, ``sync`` and the standalone
handler all decide through ``settle``; a one-shot caller that will not come back to
re-check passes ``seconds=0`` (see ``FailureHold.one_shot``).

Must not: read a clock, or keep state of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from serfbridge.rpc.models import Member


@dataclass(frozen=True)
class FailureHold:
    """``first_seen``: member name -> when (the caller's clock) it was first seen failed."""

    seconds: float
    now: float
    first_seen: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def one_shot(cls, now: float) -> FailureHold:
        """A caller with no later pass: nothing can be re-checked, so nothing is held."""
        return cls(0.0, now)


@dataclass(frozen=True)
class Settled:
    """What ``settle`` decided: hold back ``unsettled``; look again at ``recheck_at``."""

    unsettled: frozenset[str]
    hold: FailureHold  # to pass in next time, with a fresh ``now``
    recheck_at: float | None


def settle(members: Iterable[Member], hold: FailureHold) -> Settled:
    """Failed members seen failed for less than ``hold.seconds``, and when to look again."""
    failed = sorted(m.name for m in members if m.status == "failed")
    first_seen = {n: hold.first_seen.get(n, hold.now) for n in failed}
    ends = {n: t + hold.seconds for n, t in first_seen.items() if hold.now - t < hold.seconds}
    recheck_at = min(ends.values()) if ends else None
    kept = FailureHold(hold.seconds, hold.now, first_seen)
    return Settled(frozenset(ends), kept, recheck_at)
