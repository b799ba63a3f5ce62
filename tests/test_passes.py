"""The daemon's pass runners (``passes``): what a failure does to a direction.

The faults come from a FAKE Serf client (``FakeSerf``): a real agent cannot be made to
answer with a Kubernetes 403, an auth refusal and a protocol error on cue. Retry is a
value: a temporary error asks the scheduler for a retry, a permanent one stops the
direction until resume() (the next resync or a SIGHUP), and both are reported.
"""

from __future__ import annotations

import logging

import pytest

from serfbridge.config import Settings
from serfbridge.errors import (
    AuthError,
    KubeForbidden,
    KubeUnavailable,
    ProtocolError,
    RPCTimeout,
    SerfBridgeError,
    TransportError,
)
from serfbridge.health import Metrics
from serfbridge.passes import LOG_EVERY, LabelRunner, PassRunner, PublishRunner
from serfbridge.rpc.models import Member
from serfbridge.scheduler import Scheduler
from tests.test_scheduler import Clock


class FakeSerf:
    """FAKE: answers stats and members from memory, or raises ``fault`` from stats."""

    def __init__(self, members: tuple[Member, ...] = (), fault: SerfBridgeError | None = None):
        self.members_ = members
        self.fault = fault
        self.tag_calls: list[tuple[dict[str, str], tuple[str, ...]]] = []

    def stats(self) -> dict[str, dict[str, str]]:
        if self.fault is not None:
            raise self.fault
        return {"agent": {"name": "n1"}, "tags": {}}

    def members(self) -> tuple[Member, ...]:
        return self.members_

    def tags(self, set_tags, delete, *, current=None) -> None:
        self.tag_calls.append((dict(set_tags), tuple(delete)))


def member(name: str, status: str = "alive") -> Member:
    return Member(name=name, addr="10.0.0.1", port=7946, tags={}, status=status)


def fresh_scheduler(clock: Clock) -> Scheduler:
    return Scheduler(("to-k8s", "to-serf"), quiet=0.2, max_wait=2, resync=60, clock=clock)


def make(cls: type[PassRunner], serf: FakeSerf, clock: Clock) -> tuple[PassRunner, Scheduler]:
    scheduler = fresh_scheduler(clock)
    runner = cls(serf, metrics=Metrics(), scheduler=scheduler, clock=clock)  # type: ignore[arg-type]
    return runner, scheduler


SETTINGS = Settings(node_name="n1", failure_hold=5.0)


@pytest.mark.parametrize("cls", [LabelRunner, PublishRunner], ids=["to-k8s", "to-serf"])
@pytest.mark.parametrize(
    ("fault", "stopped"),
    [
        pytest.param(TransportError("connection refused"), False, id="transport-retried"),
        pytest.param(RPCTimeout("no answer"), False, id="timeout-retried"),
        pytest.param(KubeUnavailable("apiserver down"), False, id="kube-unavailable-retried"),
        pytest.param(KubeForbidden("forbidden: patch nodes"), True, id="forbidden-stops"),
        pytest.param(AuthError("Invalid authentication token"), True, id="auth-stops"),
        pytest.param(ProtocolError("garbage"), True, id="protocol-stops"),
    ],
)
def test_a_failure_is_retried_or_stops_by_its_class(cls, fault, stopped, caplog) -> None:
    clock = Clock()
    runner, scheduler = make(cls, FakeSerf(fault=fault), clock)
    with caplog.at_level(logging.WARNING, logger="serfbridge.daemon"):
        runner.run(SETTINGS)
    assert runner.stopped is stopped
    problem = runner.maybe_problem()
    assert problem is not None and f"{type(fault).__name__}: {fault}" in problem
    assert ("permanent" in problem) is stopped
    [record] = caplog.records
    assert record.levelno == (logging.ERROR if stopped else logging.WARNING)
    assert scheduler.take_due().directions == ()  # the retry timer pokes: quiet first
    clock.now += 0.3
    retried = runner.direction in scheduler.take_due().directions
    assert retried is not stopped


def test_a_stopped_direction_runs_no_pass_until_resumed() -> None:
    clock = Clock()
    serf = FakeSerf(fault=KubeForbidden("forbidden: patch nodes"))
    runner, _ = make(PublishRunner, serf, clock)
    runner.run(SETTINGS)
    serf.fault = None
    runner.run(SETTINGS)  # still stopped: nothing read, the error stays
    assert runner.last_error is not None and runner.last_ok is None
    runner.resume()
    runner.run(SETTINGS)
    assert runner.last_error is None and not runner.stopped
    assert runner.maybe_problem() is None and serf.tag_calls


def test_a_repeated_failure_is_logged_once_a_minute(caplog) -> None:
    clock = Clock()
    runner, _ = make(PublishRunner, FakeSerf(fault=TransportError("refused")), clock)
    with caplog.at_level(logging.WARNING, logger="serfbridge.daemon"):
        for _ in range(5):
            runner.run(SETTINGS)
            clock.now += 1.0
        clock.now += LOG_EVERY
        runner.run(SETTINGS)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "to-serf pass failed: refused",
        "to-serf pass failed: refused (still failing; retrying)",
    ]


def test_success_after_failure_clears_the_error(caplog) -> None:
    clock = Clock()
    serf = FakeSerf(fault=TransportError("refused"))
    runner, _ = make(PublishRunner, serf, clock)
    runner.run(SETTINGS)
    serf.fault = None
    with caplog.at_level(logging.INFO, logger="serfbridge.daemon"):
        runner.run(SETTINGS)
    assert runner.last_error is None and runner.last_ok is not None
    assert runner.maybe_problem() is None
    assert "to-serf pass succeeded again" in caplog.text


@pytest.mark.parametrize(
    ("steps", "recheck_in"),
    [
        pytest.param([("failed", 0.0)], 5.0, id="fresh-failure-rechecked-when-the-hold-ends"),
        pytest.param([("failed", 0.0), ("failed", 2.0)], 3.0, id="held-since-first-seen"),
        pytest.param([("failed", 0.0), ("failed", 6.0)], None, id="old-enough-no-recheck"),
        pytest.param([("alive", 0.0)], None, id="nothing-failed"),
        pytest.param(
            [("failed", 0.0), ("alive", 1.0), ("failed", 2.0)], 5.0, id="a-recovery-resets-it"
        ),
    ],
)
def test_the_failure_hold_is_kept_between_passes(steps, recheck_in) -> None:
    clock = Clock()
    serf = FakeSerf()
    runner, scheduler = make(LabelRunner, serf, clock)
    for status, at in steps:
        clock.now = 1000.0 + at
        serf.members_ = (member("n1"), member("n2", status))
        runner.scheduler = scheduler = fresh_scheduler(clock)  # the last re-check only
        runner.run(SETTINGS)
    timer = scheduler.maybe_timer("to-k8s")
    if recheck_in is None:
        assert timer is None
    else:
        assert timer is not None and timer.urgent
        assert timer.when == pytest.approx(clock.now + recheck_in)
