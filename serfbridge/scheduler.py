"""When the daemon's passes run: debounced pokes, the periodic resync, timed re-checks.

``Trigger`` debounces one direction; ``Scheduler`` holds one per direction, the resync
deadline and per-direction timers (a failure hold that ends, a temporary error's retry),
and tells the main loop which directions are due and how long it may sleep. Every input
of the daemon only pokes here; the passes read the truth afresh. The clock is passed in
(``clock``), so tests drive the timing with no sleep.

Callers: ``daemon`` (the main loop), the followers and the hand-off (through ``poke``).
Must not: run a pass, read Serf or Kubernetes, or know what a direction does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

Clock = Callable[[], float]
#: The longest the main loop sleeps: systemd's watchdog is fed once per loop.
MAX_SLEEP = 1.0


@dataclass
class Trigger:
    """Debounce: due ``quiet`` seconds after the last poke, or ``max_wait`` after the first."""

    quiet: float
    max_wait: float
    clock: Clock = time.monotonic
    first: float | None = None
    last: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def poke(self, *, urgent: bool = False) -> None:
        now = self.clock()
        with self.lock:
            self.first = self.first if self.first is not None else now
            self.last = now
            if urgent:
                self.first = now - self.max_wait

    def due_in(self) -> float | None:
        """Seconds until due (0.0: due now), or None when nothing poked it."""
        with self.lock:
            if self.first is None or self.last is None:
                return None
            due = min(self.last + self.quiet, self.first + self.max_wait)
        return max(0.0, due - self.clock())

    def take(self) -> None:
        with self.lock:
            self.first = self.last = None


@dataclass(frozen=True)
class Due:
    """What ``take_due`` found: the directions to run, and whether a resync came round."""

    directions: tuple[str, ...]
    resync: bool


@dataclass(frozen=True)
class Timer:
    """Poke a direction at ``when`` (the scheduler's clock); ``urgent`` skips the quiet."""

    when: float
    urgent: bool


class Scheduler:
    """One ``Trigger`` per direction, the resync period and timed pokes."""

    def __init__(
        self,
        directions: Iterable[str],
        *,
        quiet: float,
        max_wait: float,
        resync: float,
        clock: Clock = time.monotonic,
    ) -> None:
        self.clock = clock
        self.resync = resync
        self.triggers = {d: Trigger(quiet, max_wait, clock) for d in directions}
        self.next_resync = clock() + resync
        self._timers: dict[str, Timer] = {}
        self._lock = threading.Lock()
        self.wake = threading.Event()

    def poke(self, direction: str, *, urgent: bool = False) -> None:
        self.triggers[direction].poke(urgent=urgent)
        self.wake.set()

    def poke_all(self, *, urgent: bool = False) -> None:
        for direction in self.triggers:
            self.poke(direction, urgent=urgent)

    def poke_at(self, direction: str, when: float, *, urgent: bool = False) -> None:
        """Poke ``direction`` at ``when``; an earlier timer already set stays."""
        with self._lock:
            timer = self._timers.get(direction)
            if timer is None or when < timer.when:
                self._timers[direction] = Timer(when, urgent)
        self.wake.set()

    def maybe_timer(self, direction: str) -> Timer | None:
        """The timed poke waiting for ``direction``, if any."""
        with self._lock:
            return self._timers.get(direction)

    def retune(self, *, quiet: float, max_wait: float, resync: float) -> None:
        """New timing (SIGHUP); a shorter resync counts from now, not after the old one."""
        for trigger in self.triggers.values():
            trigger.quiet, trigger.max_wait = quiet, max_wait
        self.resync = resync
        self.next_resync = min(self.next_resync, self.clock() + resync)

    def take_due(self) -> Due:
        """The directions due now, in order; each is reset until its next poke."""
        self._fire_timers()
        resync = self.clock() >= self.next_resync
        if resync:
            self.next_resync = self.clock() + self.resync
            for trigger in self.triggers.values():
                trigger.poke()
        due = tuple(d for d, t in self.triggers.items() if t.due_in() == 0.0)
        for direction in due:
            self.triggers[direction].take()
        return Due(due, resync)

    def sleep_for(self) -> float:
        """How long the main loop may wait for a poke before something is due."""
        now = self.clock()
        waits = [w for w in (t.due_in() for t in self.triggers.values()) if w is not None]
        with self._lock:
            waits += [timer.when - now for timer in self._timers.values()]
        return max(0.0, min([MAX_SLEEP, self.next_resync - now, *waits]))

    def wait(self) -> None:
        """Sleep until a poke, or until ``sleep_for`` ends."""
        self.wake.wait(self.sleep_for())
        self.wake.clear()

    def _fire_timers(self) -> None:
        now = self.clock()
        with self._lock:
            fired = {d: t for d, t in self._timers.items() if t.when <= now}
            for direction in fired:
                del self._timers[direction]
        for direction, timer in fired.items():
            self.triggers[direction].poke(urgent=timer.urgent)
