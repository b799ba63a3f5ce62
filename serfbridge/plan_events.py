"""What this node left out of its tags -> the Kubernetes Events to create about it.

Role: the pure planner behind "one Event per Service and reason, not one per pass".
``bridge.publish_pass`` calls ``plan_events`` with the publish plan's left-out ports and
the reported set it kept from its last pass, applies the returned ``EventPlan`` (one
``create_event`` each) and keeps the plan's ``sent`` for the next pass; ``sync
--dry-run`` can print the plan.

Rules: every node's bridge reports on the same Service, so the message names the node; a
Service is known by its uid too (a re-created one is a new object with no Event yet); a
reason that goes away and comes back is reported again (it left ``sent``); a failed POST
is left out of ``sent`` by the applier, so it is planned again on the next pass.

Pure: data in, a plan out. No I/O, no logging, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from serfbridge.kubemodels import ServiceInfo
from serfbridge.plan_publish import LeftOut

REASON = "NotPublished"


@dataclass(frozen=True, order=True)
class EventKey:
    """What one Event reports: a Service (by uid too) and why its ports are left out."""

    namespace: str
    name: str
    uid: str
    why: str


@dataclass(frozen=True)
class PlannedEvent:
    key: EventKey
    service: ServiceInfo
    reason: str
    message: str


@dataclass(frozen=True)
class EventPlan:
    """``events`` to create; ``sent``: what counts as reported once they are created."""

    events: tuple[PlannedEvent, ...] = ()
    sent: frozenset[EventKey] = frozenset()


def plan_events(
    left_out: Iterable[LeftOut],
    services: Mapping[str, ServiceInfo],
    *,
    node: str,
    sent: frozenset[EventKey],
) -> EventPlan:
    """One Event per left-out (Service, reason) not already in ``sent``.

    Call it on every synced view, with or without omissions: ``sent`` shrinks to what is
    still left out, so a reason that comes back is reported again.
    """
    current = _ports_by_key(left_out, services)
    events = tuple(
        _event(key, services[f"{key.namespace}/{key.name}"], ports=ports, node=node)
        for key, ports in sorted(current.items())
        if key not in sent
    )
    return EventPlan(events, frozenset(current))


def _ports_by_key(
    left_out: Iterable[LeftOut], services: Mapping[str, ServiceInfo]
) -> dict[EventKey, list[str]]:
    """Each (Service, reason) of ``left_out`` whose Service is known -> its ports."""
    result: dict[EventKey, list[str]] = {}
    for lo in left_out:
        svc = services.get(f"{lo.namespace}/{lo.service}")
        if svc is not None:
            key = EventKey(lo.namespace, lo.service, svc.uid, lo.reason)
            result.setdefault(key, []).append(lo.port)
    return result


def _event(key: EventKey, svc: ServiceInfo, *, ports: list[str], node: str) -> PlannedEvent:
    message = f"not published on node {node} (ports {', '.join(ports)}): {key.why}"
    return PlannedEvent(key, svc, REASON, message)
