"""The failure hold as data: ``failure_hold.settle`` with the clock passed in."""

from __future__ import annotations

import pytest

from serfbridge.failure_hold import FailureHold, settle
from serfbridge.rpc.models import Member


def member(name: str, status: str) -> Member:
    return Member(name=name, addr="10.0.0.1", port=7946, tags={}, status=status)


@pytest.mark.parametrize(
    ("first_seen", "now", "unsettled", "recheck_at"),
    [
        pytest.param({}, 100.0, {"b"}, 105.0, id="newly-failed-is-held"),
        pytest.param({"b": 98.0}, 100.0, {"b"}, 103.0, id="still-inside-the-hold"),
        pytest.param({"b": 95.0}, 100.0, set(), None, id="hold-over-acts"),
        pytest.param({"b": 90.0, "gone": 1.0}, 100.0, set(), None, id="forgets-recovered"),
    ],
)
def test_settle(
    first_seen: dict[str, float], now: float, unsettled: set[str], recheck_at: float | None
) -> None:
    members = [member("a", "alive"), member("b", "failed"), member("c", "left")]
    result = settle(members, FailureHold(5.0, now, first_seen))
    assert result.unsettled == unsettled
    assert result.recheck_at == recheck_at
    assert set(result.hold.first_seen) == {"b"}  # only currently failed members are kept
    assert result.hold.first_seen["b"] == first_seen.get("b", now)


def test_two_failures_recheck_at_the_earliest_end() -> None:
    members = [member("b", "failed"), member("c", "failed")]
    result = settle(members, FailureHold(5.0, 100.0, {"b": 97.0}))
    assert result.unsettled == {"b", "c"}
    assert result.recheck_at == 102.0


def test_one_shot_holds_nothing() -> None:
    result = settle([member("b", "failed")], FailureHold.one_shot(100.0))
    assert result.unsettled == frozenset()
    assert result.recheck_at is None


def test_state_carries_across_passes() -> None:
    first = settle([member("b", "failed")], FailureHold(5.0, 10.0))
    later = FailureHold(first.hold.seconds, 16.0, first.hold.first_seen)
    assert settle([member("b", "failed")], later).unsettled == frozenset()
