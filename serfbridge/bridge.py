"""One reconcile pass per direction: read fresh, plan (pure), apply in one place.

Used by the daemon (each debounced trigger), ``sync --once`` and the standalone event
handler, so all of them behave the same. A pass reads the truth (Serf ``members`` and
local tags; the Kubernetes view it is given), calls ``plan_labels`` or ``plan_publish``,
and, unless ``dry_run``, applies the plan here and nowhere else: Node merge patches,
one ``tags`` call, Events for what was left out.

Must not: decide anything itself (the planners do), or remove anything on a partial
Kubernetes view (the caller says whether its view is ``synced``).
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from serfbridge.config import Settings
from serfbridge.errors import KubeConflict, KubeError
from serfbridge.kubemodels import NodeInfo, ServiceInfo, SliceInfo
from serfbridge.plan_labels import LabelPlan, plan_labels
from serfbridge.plan_publish import LeftOut, PublishPlan, plan_publish
from serfbridge.rpc.client import SerfClient
from serfbridge.rpc.models import Member

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KubeView:
    """What the bridge knows of Kubernetes; ``synced`` False means possibly incomplete."""

    nodes: Mapping[str, NodeInfo]
    services: Mapping[str, ServiceInfo] = field(default_factory=dict)
    slices: Mapping[str, SliceInfo] = field(default_factory=dict)
    synced: bool = True


@dataclass(frozen=True)
class SerfView:
    members: tuple[Member, ...]
    self_member: str
    tags: Mapping[str, str]


def read_serf(serf: SerfClient) -> SerfView:
    """Members, our own member name, and our agent's tags: two round trips."""
    stats = serf.stats()
    return SerfView(
        serf.members(), stats.get("agent", {}).get("name", ""), dict(stats.get("tags", {}))
    )


class KubeWriter(Protocol):
    """The Kubernetes side of applying: what a pass may write (``kube.KubeClient`` fits)."""

    def patch_node_metadata(
        self,
        name: str,
        *,
        labels: Mapping[str, str | None] | None = None,
        annotations: Mapping[str, str | None] | None = None,
        cache: Any = None,
    ) -> bool: ...

    def create_event(
        self, involved: NodeInfo | ServiceInfo, *, reason: str, message: str, type: str = "Warning"
    ) -> None: ...


def label_pass(
    serf_view: SerfView,
    kube_view: KubeView,
    kube: KubeWriter | None,
    settings: Settings,
    *,
    dry_run: bool = False,
    cache: Any = None,
    unsettled: Collection[str] = (),
) -> tuple[LabelPlan, int]:
    """Plan Node labels and apply them; returns the plan and the number of PATCHes sent."""
    if not kube_view.synced:
        return LabelPlan(patches=(), notes=("kubernetes view not synced: nothing written",)), 0
    plan = plan_labels(
        serf_view.members,
        kube_view.nodes,
        settings.label_settings(serf_view.self_member),
        unsettled=unsettled,
    )
    if dry_run or kube is None:
        return plan, 0
    writes = 0
    for patch in plan.patches:
        try:
            sent = kube.patch_node_metadata(
                patch.node, labels=patch.labels, annotations=patch.annotations, cache=cache
            )
        except KubeConflict:
            log.info("node %s changed under us; the next pass retries", patch.node)
            continue
        if sent:
            writes += 1
            log.info("labelled node %s (%s): %s", patch.node, patch.reason, _describe(patch.labels))
    return plan, writes


def publish_pass(
    serf: SerfClient,
    serf_view: SerfView,
    kube_view: KubeView,
    kube: KubeWriter | None,
    settings: Settings,
    *,
    dry_run: bool = False,
    cache: Any = None,
) -> tuple[PublishPlan, int]:
    """Plan this node's tags and apply them with one ``tags`` call at most."""
    plan = plan_publish(
        services=kube_view.services,
        slices=kube_view.slices,
        nodes=kube_view.nodes,
        members=serf_view.members,
        current_tags=serf_view.tags,
        settings=settings.publish_settings(serf_view.self_member),
        allow_removal=kube_view.synced,
    )
    if dry_run:
        return plan, 0
    writes = 0
    if not plan.change.noop:
        serf.tags(plan.change.set_tags, plan.change.delete, current=serf_view.tags)
        writes = 1
        log.info(
            "published %d entries (%d bytes of %d); tags set %s, deleted %s",
            len(plan.entries),
            plan.budget_used,
            settings.tag_limit,
            sorted(plan.change.set_tags),
            list(plan.change.delete),
        )
    for problem in plan.problems:
        log.warning("publish: %s", problem)
    if kube is not None and kube_view.synced:
        _record_owned_tags(kube, kube_view, plan, settings, cache)
    return plan, writes


def _record_owned_tags(
    kube: KubeWriter, view: KubeView, plan: PublishPlan, settings: Settings, cache: object
) -> None:
    node = view.nodes.get(settings.node_name)
    key = f"{settings.label_prefix}/owned-tags"
    wanted = ",".join(plan.owned_tags) or None
    if node is None or node.annotations.get(key) == wanted:
        return
    try:
        kube.patch_node_metadata(settings.node_name, annotations={key: wanted}, cache=cache)
    except KubeError as exc:
        log.warning("could not record %s on node %s: %s", key, settings.node_name, exc)


class EventReporter:
    """One Kubernetes Event per Service and reason, not one per pass.

    Every node's bridge reports on the same Service, so the message names the node. A
    Service is known by its uid too (a re-created one is a new object with no Event yet);
    a reason that goes away and comes back is reported again, and a failed POST is retried
    on the next pass. Call ``report`` after every synced pass, with or without omissions.
    """

    def __init__(self, node: str) -> None:
        self.node = node
        self._sent: set[tuple[str, str, str, str]] = set()  # (namespace, name, uid, reason)

    def report(self, kube: KubeWriter, view: KubeView, left_out: tuple[LeftOut, ...]) -> int:
        current = _left_out_by_service(view, left_out)
        failed: set[tuple[str, str, str, str]] = set()
        for key in sorted(set(current) - self._sent):
            svc, ports = current[key]
            if not self._send(kube, svc, ports, key[3]):
                failed.add(key)
        sent = len(set(current) - self._sent - failed)
        self._sent = set(current) - failed
        return sent

    def _send(self, kube: KubeWriter, svc: ServiceInfo, ports: list[str], reason: str) -> bool:
        message = f"not published on node {self.node} (ports {', '.join(ports)}): {reason}"
        try:
            kube.create_event(svc, reason="NotPublished", message=message)
        except KubeError as exc:
            log.warning("could not create an Event on %s/%s: %s", svc.namespace, svc.name, exc)
            return False
        log.warning("service %s/%s %s", svc.namespace, svc.name, message)
        return True


def _left_out_by_service(
    view: KubeView, left_out: tuple[LeftOut, ...]
) -> dict[tuple[str, str, str, str], tuple[ServiceInfo, list[str]]]:
    """(namespace, name, uid, reason) -> the Service and its left-out ports."""
    result: dict[tuple[str, str, str, str], tuple[ServiceInfo, list[str]]] = {}
    for lo in left_out:
        svc = view.services.get(f"{lo.namespace}/{lo.service}")
        if svc is not None:
            key = (lo.namespace, lo.service, svc.uid, lo.reason)
            result.setdefault(key, (svc, []))[1].append(lo.port)
    return result


def _describe(changes: Mapping[str, str | None]) -> str:
    return ", ".join(f"{k}={'<removed>' if v is None else v}" for k, v in sorted(changes.items()))
