"""TEMPORARY: the bridge API of issue 10 that the bridge slice adds, until it merges.

``bridge.read_kube(cache)`` and ``bridge.label_pass(..., hold=...)`` (see the common
brief) are written by another helper in parallel; the daemon, ``sync``, ``status`` and
the standalone handler call them through here so that the merge changes one module.
After the merge: delete this module, call ``bridge.read_kube`` and ``bridge.label_pass``
directly, and read ``plan.hold`` / ``plan.recheck_at`` instead of the ``Settled``.

Must not: grow. Nothing here is meant to stay.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serfbridge import bridge
from serfbridge.config import Settings
from serfbridge.failure_hold import FailureHold, Settled, settle
from serfbridge.plan_labels import LabelPlan

if TYPE_CHECKING:
    from serfbridge.kube import KubeClient
    from serfbridge.kube_cache import KubeCache


def read_kube(cache: KubeCache | None) -> bridge.KubeView:
    """The Kubernetes view from the cache; an empty, unsynced one without a cache."""
    if cache is None:
        return bridge.KubeView(nodes={}, synced=False)
    synced = bool(cache.synced)  # first: a view read before the flag is at least as old
    return bridge.KubeView(
        nodes=cache.nodes(),
        services=cache.services(),
        slices=cache.endpoint_slices(),
        synced=synced,
    )


def label_pass(
    serf_view: bridge.SerfView,
    kube_view: bridge.KubeView,
    kube: KubeClient | None,
    settings: Settings,
    *,
    hold: FailureHold,
    cache: KubeCache | None = None,
    dry_run: bool = False,
) -> tuple[LabelPlan, int, Settled]:
    """``bridge.label_pass`` with the failure hold as data, and what the hold decided.

    After the merge ``bridge.label_pass(..., hold=hold)`` settles the hold itself and
    returns it in ``LabelPlan.hold`` / ``LabelPlan.recheck_at``.
    """
    settled = settle(serf_view.members, hold)
    plan, writes = bridge.label_pass(
        serf_view,
        kube_view,
        kube,
        settings,
        dry_run=dry_run,
        cache=cache,
        unsettled=settled.unsettled,
    )
    return plan, writes, settled
