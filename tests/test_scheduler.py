"""The daemon's timing (``scheduler``): debounce, max-wait, urgent pokes, the resync and
timed pokes, driven by an injected clock, so no test sleeps."""

from __future__ import annotations

import pytest

from serfbridge.scheduler import MAX_SLEEP, Scheduler, Trigger


class Clock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def run_steps(trigger: Trigger, clock: Clock, steps: list[tuple[str, float]]) -> None:
    for action, value in steps:
        if action == "poke":
            trigger.poke()
        elif action == "urgent":
            trigger.poke(urgent=True)
        elif action == "wait":
            clock.now += value
        elif action == "take":
            trigger.take()


@pytest.mark.parametrize(
    ("steps", "due_in"),
    [
        pytest.param([], None, id="never-poked"),
        pytest.param([("poke", 0)], 0.2, id="quiet-after-a-poke"),
        pytest.param([("poke", 0), ("wait", 0.15)], 0.05, id="quiet-counts-down"),
        pytest.param([("poke", 0), ("wait", 0.3)], 0.0, id="due-after-quiet"),
        pytest.param(
            [("poke", 0), ("wait", 0.15), ("poke", 0)], 0.2, id="a-new-poke-restarts-the-quiet"
        ),
        pytest.param(
            [("poke", 0)] + [("wait", 0.15), ("poke", 0)] * 14,
            0.0,
            id="max-wait-caps-a-stream-of-pokes",
        ),
        pytest.param(
            [("poke", 0)] + [("wait", 0.15), ("poke", 0)] * 13,
            0.05,
            id="max-wait-nearly-reached",
        ),
        pytest.param([("urgent", 0)], 0.0, id="urgent-is-due-at-once"),
        pytest.param([("poke", 0), ("wait", 0.05), ("urgent", 0)], 0.0, id="urgent-after-poke"),
        pytest.param([("poke", 0), ("take", 0)], None, id="take-resets"),
        pytest.param([("poke", 0), ("take", 0), ("poke", 0)], 0.2, id="poke-after-take"),
    ],
)
def test_trigger(steps, due_in) -> None:
    clock = Clock()
    trigger = Trigger(quiet=0.2, max_wait=2.0, clock=clock)
    run_steps(trigger, clock, steps)
    got = trigger.due_in()
    assert got == (None if due_in is None else pytest.approx(due_in))


def make_scheduler(clock: Clock, *, resync: float = 60.0) -> Scheduler:
    return Scheduler(("to-k8s", "to-serf"), quiet=0.2, max_wait=2.0, resync=resync, clock=clock)


@pytest.mark.parametrize(
    ("actions", "due", "resync"),
    [
        pytest.param([], (), False, id="nothing-poked"),
        pytest.param([("poke", "to-k8s", False), ("wait", 0.3)], ("to-k8s",), False, id="one"),
        pytest.param([("poke", "to-serf", True)], ("to-serf",), False, id="urgent-at-once"),
        pytest.param([("poke", "to-k8s", False)], (), False, id="still-quiet"),
        pytest.param([("all", "", True)], ("to-k8s", "to-serf"), False, id="all-urgent"),
        pytest.param([("wait", 61.0)], (), True, id="resync-pokes-not-urgent"),
        pytest.param(
            [("wait", 61.0), ("take", ""), ("wait", 0.3)],
            ("to-k8s", "to-serf"),
            False,
            id="resync-then-quiet",
        ),
        pytest.param([("at", "to-k8s", True, 5.0), ("wait", 4.9)], (), False, id="timer-not-yet"),
        pytest.param(
            [("at", "to-k8s", True, 5.0), ("wait", 5.0)],
            ("to-k8s",),
            False,
            id="urgent-timer-fires",
        ),
        pytest.param(
            [("at", "to-serf", False, 1.0), ("wait", 1.0), ("take", ""), ("wait", 0.3)],
            ("to-serf",),
            False,
            id="timer-then-quiet",
        ),
    ],
)
def test_scheduler_take_due(actions, due, resync) -> None:
    clock = Clock()
    scheduler = make_scheduler(clock)
    for action, *args in actions:
        if action == "poke":
            scheduler.poke(args[0], urgent=args[1])
        elif action == "all":
            scheduler.poke_all(urgent=args[1])
        elif action == "at":
            scheduler.poke_at(args[0], clock.now + args[2], urgent=args[1])
        elif action == "wait":
            clock.now += args[0]
        elif action == "take":
            scheduler.take_due()
    got = scheduler.take_due()
    assert (got.directions, got.resync) == (due, resync)


@pytest.mark.parametrize(
    ("actions", "sleep"),
    [
        pytest.param([], MAX_SLEEP, id="idle-sleeps-at-most-a-second"),
        pytest.param([("poke", 0.0)], 0.2, id="until-the-quiet-ends"),
        pytest.param([("at", 0.5)], 0.5, id="until-a-timer"),
        pytest.param([("at", -1.0)], 0.0, id="a-timer-past-is-now"),
        pytest.param([("wait", 59.7)], 0.3, id="until-the-resync"),
    ],
)
def test_scheduler_sleep_for(actions, sleep) -> None:
    clock = Clock()
    scheduler = make_scheduler(clock)
    for action, value in actions:
        if action == "poke":
            scheduler.poke("to-k8s")
        elif action == "at":
            scheduler.poke_at("to-serf", clock.now + value)
        elif action == "wait":
            clock.now += value
    assert scheduler.sleep_for() == pytest.approx(sleep)


def test_an_earlier_timer_wins_and_a_later_one_is_ignored() -> None:
    clock = Clock()
    scheduler = make_scheduler(clock)
    scheduler.poke_at("to-k8s", clock.now + 3.0, urgent=True)
    scheduler.poke_at("to-k8s", clock.now + 9.0, urgent=True)
    scheduler.poke_at("to-k8s", clock.now + 2.0, urgent=True)
    clock.now += 2.0
    assert scheduler.take_due().directions == ("to-k8s",)
    clock.now += 10.0  # the others were dropped with the earliest
    assert scheduler.take_due().directions == ()


def test_retune_moves_a_longer_resync_no_later_and_a_shorter_one_closer() -> None:
    clock = Clock()
    scheduler = make_scheduler(clock, resync=60.0)
    clock.now += 10.0
    scheduler.retune(quiet=0.5, max_wait=3.0, resync=5.0)
    assert scheduler.next_resync == pytest.approx(clock.now + 5.0)
    scheduler.retune(quiet=0.5, max_wait=3.0, resync=600.0)
    assert scheduler.next_resync == pytest.approx(clock.now + 5.0)
    scheduler.poke("to-k8s")
    assert scheduler.triggers["to-k8s"].due_in() == pytest.approx(0.5)


def test_a_poke_wakes_the_main_loop() -> None:
    scheduler = make_scheduler(Clock())
    assert not scheduler.wake.is_set()
    scheduler.poke("to-serf")
    assert scheduler.wake.is_set()
    scheduler.wait()  # returns at once: woken
    assert not scheduler.wake.is_set()
