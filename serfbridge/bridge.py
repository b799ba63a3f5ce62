"""One reconcile pass per direction: read fresh, plan (pure), apply in one place.

Used by the daemon (each debounced trigger), ``sync --once`` and the standalone event
handler, so all of them behave the same. A pass reads the truth (Serf ``members`` and
local tags; the Kubernetes view from ``read_kube``, the one place a ``KubeView`` is built),
calls the planners (``plan_labels``; ``plan_publish``, ``plan_owned``, ``plan_events``;
``plan_imports``), and, unless ``dry_run``, applies the plan here and nowhere else: Node
merge patches as planned (never re-read or re-diffed), one ``tags`` call, the owned-tags
annotation, Events for what was left out, and the imports' object writes (through
``import_apply``). Every write is in the plan it returns, so ``--dry-run`` shows it.

Must not: decide anything itself (the planners do), or remove anything on a partial
Kubernetes view (the caller says whether its view is ``synced``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from serfbridge.cloudy import Entry, TagChange
from serfbridge.config import Settings
from serfbridge.errors import KubeConflict, KubeError
from serfbridge.failure_hold import FailureHold, settle
from serfbridge.kubemodels import NodeInfo, ServiceInfo, SliceInfo
from serfbridge.plan_events import EventKey, EventPlan, PlannedEvent, plan_events
from serfbridge.plan_labels import LabelPlan, NodePatch, plan_labels
from serfbridge.plan_owned import maybe_owned_tags_patch
from serfbridge.plan_publish import LeftOut, PublishPlan, plan_publish
from serfbridge.rpc.models import Member

if TYPE_CHECKING:  # the cache pulls in `kubernetes`; the standalone handler must not load it
    from serfbridge.import_apply import ObjectWriter
    from serfbridge.kube_cache import KubeCache
    from serfbridge.plan_imports import ImportPlan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class KubeView:
    """What the bridge knows of Kubernetes; ``synced`` False means possibly incomplete."""

    nodes: Mapping[str, NodeInfo]
    services: Mapping[str, ServiceInfo] = field(default_factory=dict)
    slices: Mapping[str, SliceInfo] = field(default_factory=dict)
    synced: bool = True
    slice_version: str = "v1"  # the discovery.k8s.io version the server serves slices at


@dataclass(frozen=True)
class SerfView:
    members: tuple[Member, ...]
    self_member: str
    tags: Mapping[str, str]


class SerfReader(Protocol):
    """The Serf side of reading (``rpc.client.SerfClient`` fits)."""

    def stats(self) -> dict[str, dict[str, str]]: ...

    def members(self) -> tuple[Member, ...]: ...


class TagsWriter(Protocol):
    """The Serf side of applying: one ``tags`` call (``rpc.client.SerfClient`` fits)."""

    def tags(
        self, set_tags: Mapping[str, str], delete: Iterable[str], *, current: Mapping[str, str]
    ) -> object: ...


class KubeWriter(Protocol):
    """The Kubernetes side of applying: what a pass may write (``kube.KubeClient`` fits)."""

    def patch_node(
        self,
        name: str,
        *,
        labels: Mapping[str, str | None] | None = None,
        annotations: Mapping[str, str | None] | None = None,
    ) -> None: ...

    def create_event(
        self, involved: NodeInfo | ServiceInfo, *, reason: str, message: str, type: str = "Warning"
    ) -> None: ...


def read_serf(serf: SerfReader) -> SerfView:
    """Members, our own member name, and our agent's tags: two round trips."""
    stats = serf.stats()
    return SerfView(
        serf.members(), stats.get("agent", {}).get("name", ""), dict(stats.get("tags", {}))
    )


def read_kube(cache: KubeCache | None) -> KubeView:
    """The Kubernetes view of one pass: the cache's snapshot, unsynced when there is none."""
    if cache is None:
        return KubeView(nodes={}, synced=False)
    synced = cache.synced  # read first: a view is never called synced after the fact
    return KubeView(
        nodes=cache.nodes(),
        services=cache.services(),
        slices=cache.endpoint_slices(),
        synced=synced,
        slice_version=cache.slice_version,
    )


# --- to-k8s ----------------------------------------------------------------------------


def label_pass(
    serf_view: SerfView,
    kube_view: KubeView,
    *,
    kube: KubeWriter | None,
    settings: Settings,
    hold: FailureHold,
    dry_run: bool = False,
    cache: KubeCache | None = None,
) -> tuple[LabelPlan, int]:
    """Plan Node labels and apply them; returns the plan and the number of PATCHes sent."""
    if not kube_view.synced:
        # Nothing is written, but the hold follows the gossip all the same: a failure seen
        # now is as old as it is when the view comes back.
        settled = settle(serf_view.members, hold)
        note = "kubernetes view not synced: nothing written"
        plan = LabelPlan((), notes=(note,), hold=settled.hold, recheck_at=settled.recheck_at)
        return plan, 0
    plan = plan_labels(
        serf_view.members,
        kube_view.nodes,
        settings=settings.label_settings(serf_view.self_member),
        hold=hold,
    )
    if dry_run or kube is None:
        return plan, 0
    return plan, apply_node_patches(kube, plan.patches, cache=cache)


def apply_node_patches(
    kube: KubeWriter, patches: Iterable[NodePatch], *, cache: KubeCache | None
) -> int:
    """Send each planned patch as it is; returns how many were sent.

    A conflict is skipped (the next pass plans again from fresh data). Each sent patch is
    written through into ``cache`` so a pass before its watch event does not repeat it.
    """
    writes = 0
    for patch in patches:
        try:
            _send_patch(kube, patch, cache=cache)
        except KubeConflict:
            log.info("node %s changed under us; the next pass retries", patch.node)
            continue
        writes += 1
        log.info("labelled node %s (%s): %s", patch.node, patch.reason, _describe(patch))
    return writes


def _send_patch(kube: KubeWriter, patch: NodePatch, *, cache: KubeCache | None) -> None:
    kube.patch_node(patch.node, labels=patch.labels, annotations=patch.annotations)
    if cache is not None:
        cache.note_patched(patch.node, labels=patch.labels, annotations=patch.annotations)


# --- to-serf ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PublishPass:
    """Every write of one to-serf pass: the ``tags`` call, our owned-tags patch, Events.

    Reads like the ``PublishPlan`` it wraps (``entries``, ``left_out``, ``change``,
    ``budget_used``, ``problems``) for callers that print or count it. After applying,
    ``events.sent`` is what was really reported (a failed POST is left out, so it is
    retried); keep it and pass it as ``reported`` next time.
    """

    plan: PublishPlan
    owned: NodePatch | None = None
    events: EventPlan = field(default_factory=EventPlan)

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.plan.entries

    @property
    def left_out(self) -> tuple[LeftOut, ...]:
        return self.plan.left_out

    @property
    def change(self) -> TagChange:
        return self.plan.change

    @property
    def budget_used(self) -> int:
        return self.plan.budget_used

    @property
    def problems(self) -> tuple[str, ...]:
        return self.plan.problems

    @property
    def events_created(self) -> int:
        """Events this pass creates (planned, or after applying: really created)."""
        return sum(1 for e in self.events.events if e.key in self.events.sent)


def plan_publish_pass(
    serf_view: SerfView,
    kube_view: KubeView,
    *,
    settings: Settings,
    reported: frozenset[EventKey] | None,
) -> PublishPass:
    """The whole to-serf plan. ``reported`` None: plan no Events (a caller that keeps no
    reported set between passes, so it cannot report once per reason)."""
    plan = plan_publish(
        services=kube_view.services,
        slices=kube_view.slices,
        nodes=kube_view.nodes,
        members=serf_view.members,
        current_tags=serf_view.tags,
        settings=settings.publish_settings(serf_view.self_member),
        allow_removal=kube_view.synced,
    )
    owned = maybe_owned_tags_patch(
        kube_view.nodes.get(settings.node_name),
        plan.owned_tags,
        key=f"{settings.label_prefix}/owned-tags",
        synced=kube_view.synced,
    )
    if reported is None or not kube_view.synced:  # unsynced: keep what was reported
        return PublishPass(plan, owned, EventPlan(sent=reported or frozenset()))
    events = plan_events(plan.left_out, kube_view.services, node=settings.node_name, sent=reported)
    return PublishPass(plan, owned, events)


def publish_pass(
    serf: TagsWriter,
    serf_view: SerfView,
    *,
    kube_view: KubeView,
    kube: KubeWriter | None,
    settings: Settings,
    dry_run: bool = False,
    cache: KubeCache | None = None,
    reported: frozenset[EventKey] | None = None,
) -> tuple[PublishPass, int]:
    """Plan this node's tags (and what goes with them) and apply them; the int counts
    ``tags`` calls (one at most)."""
    planned = plan_publish_pass(serf_view, kube_view, settings=settings, reported=reported)
    if dry_run:
        return planned, 0
    return apply_publish_pass(
        serf, kube, planned=planned, current=serf_view.tags, settings=settings, cache=cache
    )


def apply_publish_pass(
    serf: TagsWriter,
    kube: KubeWriter | None,
    *,
    planned: PublishPass,
    current: Mapping[str, str],
    settings: Settings,
    cache: KubeCache | None,
) -> tuple[PublishPass, int]:
    """The one place a to-serf pass writes; returns the pass as applied and tags calls."""
    writes = _apply_tags(serf, planned.plan, current=current, tag_limit=settings.tag_limit)
    if kube is not None and planned.owned is not None:
        _record_owned_tags(kube, planned.owned, cache=cache)
    return replace(planned, events=apply_events(kube, planned.events)), writes


def _apply_tags(
    serf: TagsWriter, plan: PublishPlan, *, current: Mapping[str, str], tag_limit: int
) -> int:
    """One ``tags`` call unless the plan changes nothing; returns the calls made."""
    writes = 0
    if not plan.change.noop:
        serf.tags(plan.change.set_tags, plan.change.delete, current=current)
        writes = 1
        log.info(
            "published %d entries (%d bytes of %d); tags set %s, deleted %s",
            len(plan.entries),
            plan.budget_used,
            tag_limit,
            sorted(plan.change.set_tags),
            list(plan.change.delete),
        )
    for problem in plan.problems:
        log.warning("publish: %s", problem)
    return writes


def _record_owned_tags(kube: KubeWriter, patch: NodePatch, *, cache: KubeCache | None) -> None:
    try:
        _send_patch(kube, patch, cache=cache)
    except KubeError as exc:
        log.warning("could not record %s on node %s: %s", _describe(patch), patch.node, exc)


def apply_events(kube: KubeWriter | None, plan: EventPlan) -> EventPlan:
    """Create the planned Events; returns the plan with those not created (a failed POST;
    all of them with no writer) out of ``sent``, so a later pass reports them."""
    failed = {e.key for e in plan.events if kube is None or not _create_event(kube, e)}
    return replace(plan, sent=plan.sent - failed)


def _create_event(kube: KubeWriter, event: PlannedEvent) -> bool:
    svc = event.service
    try:
        kube.create_event(svc, reason=event.reason, message=event.message)
    except KubeError as exc:
        log.warning("could not create an Event on %s/%s: %s", svc.namespace, svc.name, exc)
        return False
    log.warning("service %s/%s %s", svc.namespace, svc.name, event.message)
    return True


# --- imports ---------------------------------------------------------------------------


# The imports modules load only here: the event handler's standalone pass never runs this
# direction, and they are a fifth of its start-up imports.


def plan_import_pass(serf_view: SerfView, kube_view: KubeView, *, settings: Settings) -> ImportPlan:
    """The imports plan of one pass (nothing to write on a partial view)."""
    from serfbridge.plan_imports import plan_imports

    return plan_imports(
        serf_view.members,
        nodes=kube_view.nodes,
        services=kube_view.services,
        slices=kube_view.slices,
        settings=settings.plan_settings(serf_view.self_member),
        synced=kube_view.synced,
        slice_version=kube_view.slice_version,
    )


def import_pass(
    serf_view: SerfView,
    kube_view: KubeView,
    *,
    kube: ObjectWriter | None,
    settings: Settings,
    dry_run: bool = False,
    cache: KubeCache | None = None,
) -> tuple[ImportPlan, int]:
    """Plan the imported Services and EndpointSlices and apply them; the int counts writes."""
    plan = plan_import_pass(serf_view, kube_view, settings=settings)
    return plan, _apply_imports(kube, plan, dry_run=dry_run, cache=cache)


def prune_imports(
    kube_view: KubeView,
    *,
    kube: ObjectWriter | None,
    settings: Settings,
    dry_run: bool = False,
    cache: KubeCache | None = None,
) -> tuple[ImportPlan, int]:
    """Delete everything this cluster imported; refused on a partial view (it could miss
    some), and the plan says so."""
    from serfbridge.plan_imports import ImportPlan, plan_prune

    if not kube_view.synced:
        return ImportPlan(notes=("kubernetes view not synced: nothing pruned",)), 0
    plan = plan_prune(kube_view.services, kube_view.slices, settings=settings.plan_settings(None))
    return plan, _apply_imports(kube, plan, dry_run=dry_run, cache=cache)


def _apply_imports(
    kube: ObjectWriter | None, plan: ImportPlan, *, dry_run: bool, cache: KubeCache | None
) -> int:
    if dry_run or kube is None:
        return 0
    from serfbridge.import_apply import apply_import_plan

    return apply_import_plan(kube, plan, cache=cache)


def _describe(patch: NodePatch) -> str:
    changes = patch.labels or patch.annotations  # a label patch shows its labels, as before
    return ", ".join(f"{k}={'<removed>' if v is None else v}" for k, v in sorted(changes.items()))
