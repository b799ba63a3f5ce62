"""The Events planner: one Event per Service (by uid) and reason, not one per pass."""

from __future__ import annotations

import dataclasses

import pytest

from serfbridge.kubemodels import ServiceInfo, ServicePort
from serfbridge.plan_events import REASON, EventKey, EventPlan, plan_events
from serfbridge.plan_publish import LeftOut


def svc(name: str, uid: str | None = None, ns: str = "default") -> ServiceInfo:
    ports = (ServicePort("http", 80, 30080, "TCP"),)
    return ServiceInfo(ns, name, uid or name, "NodePort", ports, None, {}, {}, ())


def left(name: str, port: str = "80", why: str = "budget exceeded", ns: str = "default"):
    return LeftOut(ns, name, port, why)


def key(name: str, why: str = "budget exceeded", uid: str | None = None) -> EventKey:
    return EventKey("default", name, uid or name, why)


SERVICES = {"default/a": svc("a"), "default/b": svc("b")}


@pytest.mark.parametrize(
    ("left_out", "sent", "expected_events", "expected_sent"),
    [
        pytest.param((), frozenset(), [], set(), id="nothing-left-out"),
        pytest.param((left("a"),), frozenset(), [key("a")], {key("a")}, id="new-reason"),
        pytest.param(
            (left("a"),), frozenset({key("a")}), [], {key("a")}, id="already-reported-once"
        ),
        pytest.param((), frozenset({key("a")}), [], set(), id="gone-leaves-sent"),
        pytest.param(
            (left("a", why="other"),),
            frozenset({key("a")}),
            [key("a", "other")],
            {key("a", "other")},
            id="new-reason-same-service",
        ),
        pytest.param(
            (left("a"), left("a", port="81")), frozenset(), [key("a")], {key("a")}, id="one-per-svc"
        ),
        pytest.param((left("zz"),), frozenset(), [], set(), id="unknown-service-skipped"),
        pytest.param(
            (left("b"), left("a")),
            frozenset(),
            [key("a"), key("b")],
            {key("a"), key("b")},
            id="sorted-by-service",
        ),
    ],
)
def test_plan_events(left_out, sent, expected_events, expected_sent) -> None:
    plan = plan_events(left_out, SERVICES, node="k1", sent=sent)
    assert [e.key for e in plan.events] == expected_events
    assert plan.sent == expected_sent
    assert all(e.reason == REASON for e in plan.events)


def test_a_recreated_service_is_a_new_object() -> None:
    services = {"default/a": svc("a", uid="a2")}
    plan = plan_events((left("a"),), services, node="k1", sent=frozenset({key("a")}))
    assert [e.key for e in plan.events] == [key("a", uid="a2")]


def test_the_message_names_the_node_and_the_ports() -> None:
    services = {"default/a": svc("a")}
    lefts = tuple(left("a", port=p, why="budget exceeded: limit 512") for p in ("80", "81"))
    [event] = plan_events(lefts, services, node="k2", sent=frozenset()).events
    assert event.message == "not published on node k2 (ports 80, 81): budget exceeded: limit 512"
    assert event.service is services["default/a"]


class FakeEvents:
    """The Kubernetes writer of a pass; ``fail`` makes the next Event POSTs fail."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, str, str]] = []
        self.fail = False

    def create_event(self, involved, *, reason, message, type="Warning") -> None:
        from serfbridge.errors import KubeUnavailable

        if self.fail:
            raise KubeUnavailable("apiserver down")
        self.sent.append((involved.name, involved.uid, reason, message))

    def patch_node(self, name, *, labels=None, annotations=None) -> None:
        raise AssertionError("no patch expected")


class Reporter:
    """What the daemon does each synced pass: plan, apply, keep ``sent`` for the next."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.sent: frozenset[EventKey] = frozenset()

    def report(self, kube: FakeEvents, services, left_out) -> int:
        from serfbridge.bridge import apply_events

        applied = apply_events(
            kube, plan_events(left_out, services, node=self.node, sent=self.sent)
        )
        self.sent = applied.sent
        return sum(1 for e in applied.events if e.key in applied.sent)


def test_event_reporter_names_the_node_and_reports_once_per_reason() -> None:
    kube = FakeEvents()
    services = {"default/a": svc("a")}
    lefts = tuple(LeftOut("default", "a", p, "budget exceeded: limit 512") for p in ("80", "81"))
    reporter = Reporter("k2")
    assert reporter.report(kube, services, lefts) == 1
    assert reporter.report(kube, services, lefts) == 0  # same reason: no second Event
    assert kube.sent == [
        (
            "a",
            "a",
            "NotPublished",
            "not published on node k2 (ports 80, 81): budget exceeded: limit 512",
        )
    ]


def test_event_reporter_retries_failures_and_reports_again_after_a_gap() -> None:
    kube, reporter = FakeEvents(), Reporter("k1")
    services = {"default/a": svc("a")}
    lefts = (LeftOut("default", "a", "80", "budget exceeded"),)
    kube.fail = True
    assert reporter.report(kube, services, lefts) == 0  # the POST failed: not marked as sent
    kube.fail = False
    assert reporter.report(kube, services, lefts) == 1  # so the next pass sends it
    assert reporter.report(kube, services, ()) == 0  # everything fits now
    assert reporter.report(kube, services, lefts) == 1  # left out again: reported again
    recreated = {"default/a": dataclasses.replace(services["default/a"], uid="a2")}
    assert reporter.report(kube, recreated, lefts) == 1  # a re-created Service is a new object
    assert [uid for _, uid, _, _ in kube.sent] == ["a", "a", "a2"]


def test_an_empty_plan_is_the_default() -> None:
    assert EventPlan() == EventPlan(events=(), sent=frozenset())
