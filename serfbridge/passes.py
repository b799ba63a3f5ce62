"""The daemon's pass runners: one class per direction, each running its ``bridge`` pass.

``PassRunner`` does what both directions share: read Serf and the Kubernetes view
afresh, call the direction's pass, count it, remember the last success and the last
error for readiness and ``/status``, and honour the error's retry value
(``errors.SerfBridgeError.retry_after``): a temporary error is retried after its delay
(through the scheduler), a permanent one (forbidden, auth, protocol) stops that
direction until the next resync or SIGHUP, and is reported, never retried in a loop.
A failure is logged once, then once a minute while it lasts.

``LabelRunner`` (to-k8s) keeps the failure hold as data between passes and asks the
scheduler to look again when it ends; ``PublishRunner`` (to-serf) records the plan for
``/status`` and reports what was left out as Kubernetes Events; ``ImportRunner`` (imports,
off unless ``--import``) keeps the imports plan's counts for ``/status`` and the gauges.

Callers: ``daemon``. Must not: plan anything (the planners do, through ``bridge``),
schedule itself beyond asking the scheduler, or branch on a direction's name.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

from serfbridge import bridge
from serfbridge.config import Settings
from serfbridge.errors import RPCError, SerfBridgeError
from serfbridge.failure_hold import FailureHold
from serfbridge.health import Metrics
from serfbridge.plan_events import EventKey
from serfbridge.rpc.client import SerfClient
from serfbridge.scheduler import Clock, Scheduler

if TYPE_CHECKING:
    from serfbridge.kube import KubeClient
    from serfbridge.kube_cache import KubeCache
    from serfbridge.kube_writes import KubeObjects
    from serfbridge.plan_imports import ImportPlan

log = logging.getLogger("serfbridge.daemon")
#: While a pass keeps failing the same way, its log line repeats at most this often.
LOG_EVERY = 60.0


class PassRunner:
    """Runs one direction's pass when the scheduler says it is due."""

    direction: ClassVar[str]

    def __init__(
        self,
        serf: SerfClient,
        *,
        metrics: Metrics,
        scheduler: Scheduler,
        clock: Clock = time.monotonic,
    ) -> None:
        self.serf = serf
        self.metrics = metrics
        self.scheduler = scheduler
        self.clock = clock
        self.kube: KubeClient | None = None
        self.cache: KubeCache | None = None
        self.self_member = ""
        self.last_ok: float | None = None  # wall-clock time, for /status and the gauge
        self.last_error: str | None = None
        self.stopped = False  # a permanent error: no pass until resume()
        self._error_logged = -LOG_EVERY

    def enabled(self, settings: Settings) -> bool:
        raise NotImplementedError

    def apply(
        self, settings: Settings, serf_view: bridge.SerfView, *, kube_view: bridge.KubeView
    ) -> tuple[int, bool]:
        """Run the direction's pass: (writes sent, whether it counts as a full sync)."""
        raise NotImplementedError

    def attach_kube(self, kube: KubeClient | None, cache: KubeCache | None) -> None:
        self.kube, self.cache = kube, cache

    def resume(self) -> None:
        """A resync or a reload: a direction stopped by a permanent error tries again."""
        self.stopped = False

    def maybe_problem(self) -> str | None:
        """Why this direction is not synced, or None when its last pass succeeded."""
        if self.last_error is not None:
            stopped = " (permanent: not retried before the next resync)" if self.stopped else ""
            return self.last_error + stopped
        return "no pass yet" if self.last_ok is None else None

    def run(self, settings: Settings) -> None:
        if not self.enabled(settings) or self.stopped:
            return
        cpu = time.thread_time()
        try:
            self._attempt(settings)
        finally:
            self.metrics.passes.labels(self.direction).inc()
            self.metrics.pass_cpu.labels(self.direction).inc(max(0.0, time.thread_time() - cpu))

    def _attempt(self, settings: Settings) -> None:
        try:
            serf_view = bridge.read_serf(self.serf)
            self.self_member = serf_view.self_member
            self.metrics.rpc_connected.set(1)
            writes, ok = self.apply(settings, serf_view, kube_view=bridge.read_kube(self.cache))
        except SerfBridgeError as exc:
            self._on_error(exc)
            return
        self.metrics.writes.labels(self.direction).inc(writes)
        if ok:
            self._on_success()

    def _on_success(self) -> None:
        self.last_ok = time.time()
        if self.last_error is not None:
            self.last_error = None
            log.info("%s pass succeeded again", self.direction)
        self.metrics.last_sync.labels(self.direction).set(self.last_ok)

    def _on_error(self, exc: SerfBridgeError) -> None:
        kind = type(exc).__name__
        self.metrics.errors.labels(kind).inc()
        if isinstance(exc, RPCError):
            self.metrics.rpc_connected.set(0)
        text = f"{kind}: {exc}"
        repeat = self.last_error == text
        self.last_error = text
        if exc.retry_after is None:
            self.stopped = True
        else:
            self.scheduler.poke_at(self.direction, self.clock() + exc.retry_after)
        self._log_failure(exc, repeat=repeat)

    def _log_failure(self, exc: SerfBridgeError, *, repeat: bool) -> None:
        # Retries are quick (the agent may be back any moment), so the log says a failure
        # once, then only once a minute while it lasts, not at every retry.
        now = self.clock()
        if repeat and now - self._error_logged < LOG_EVERY:
            return
        self._error_logged = now
        if self.stopped:
            log.error(
                "%s pass failed: %s (permanent: not retried before the next resync)",
                self.direction,
                exc,
            )
        else:
            log.warning(
                "%s pass failed: %s%s",
                self.direction,
                exc,
                " (still failing; retrying)" if repeat else "",
            )


class LabelRunner(PassRunner):
    """to-k8s: Serf members -> Node labels, with the failure hold kept between passes."""

    direction = "to-k8s"

    def __init__(
        self,
        serf: SerfClient,
        *,
        metrics: Metrics,
        scheduler: Scheduler,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(serf, metrics=metrics, scheduler=scheduler, clock=clock)
        self.hold = FailureHold(0.0, clock())
        self._last_skipped: dict[str, int] = {}
        self._last_notes: tuple[str, ...] = ()

    def enabled(self, settings: Settings) -> bool:
        return settings.to_k8s

    def apply(
        self, settings: Settings, serf_view: bridge.SerfView, *, kube_view: bridge.KubeView
    ) -> tuple[int, bool]:
        hold = FailureHold(settings.failure_hold, self.clock(), self.hold.first_seen)
        plan, writes = bridge.label_pass(
            serf_view, kube_view, kube=self.kube, settings=settings, hold=hold, cache=self.cache
        )
        self.hold = plan.hold
        if plan.recheck_at is not None:  # a held-back failure becomes old enough then
            self.scheduler.poke_at(self.direction, plan.recheck_at, urgent=True)
        self._count_rejects(dict(plan.skipped))
        self._log_notes(plan.notes)
        return writes, kube_view.synced

    def _count_rejects(self, skipped: Mapping[str, int]) -> None:
        """Gossip that cannot become labels: counted, and logged when it changes."""
        if skipped == self._last_skipped:
            return
        if skipped:
            log.warning("gossip skipped (not valid label syntax or not allowed): %s", skipped)
        self._last_skipped = dict(skipped)
        for reason, count in skipped.items():
            self.metrics.gossip_rejects.labels(reason).inc(count)

    def _log_notes(self, notes: tuple[str, ...]) -> None:
        if notes != self._last_notes:
            for note in notes:
                log.warning("to-k8s: %s", note)
            self._last_notes = notes


class PublishRunner(PassRunner):
    """to-serf: Services -> this node's Serf tags, and Events for what was left out."""

    direction = "to-serf"

    def __init__(
        self,
        serf: SerfClient,
        *,
        metrics: Metrics,
        scheduler: Scheduler,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(serf, metrics=metrics, scheduler=scheduler, clock=clock)
        self.reported: frozenset[EventKey] = frozenset()  # Events sent (``plan_events``)
        self.last_plan: dict[str, object] = {}

    def enabled(self, settings: Settings) -> bool:
        return settings.to_serf

    def apply(
        self, settings: Settings, serf_view: bridge.SerfView, *, kube_view: bridge.KubeView
    ) -> tuple[int, bool]:
        plan, writes = bridge.publish_pass(
            self.serf,
            serf_view,
            kube_view=kube_view,
            kube=self.kube,
            settings=settings,
            cache=self.cache,
            reported=self.reported if self.kube is not None else None,
        )
        self._record(plan, kube_view)
        return writes, True

    def _record(self, plan: bridge.PublishPass, view: bridge.KubeView) -> None:
        self.metrics.budget.labels("used").set(plan.budget_used)
        self.metrics.not_published.set(len(plan.left_out))
        self.last_plan = {
            "publishes": [e.to_wire() for e in plan.entries],
            "left_out": [vars(lo) for lo in plan.left_out],
            "budget_used": plan.budget_used,
            "problems": list(plan.problems),
        }
        if self.kube is not None and view.synced:  # also when empty: resets what was sent
            self.reported = plan.events.sent
            self.metrics.kube_events.inc(plan.events_created)


class ImportRunner(PassRunner):
    """imports: Cloudy services -> Services and EndpointSlices in the import namespace."""

    direction = "imports"

    def __init__(
        self,
        serf: SerfClient,
        *,
        metrics: Metrics,
        scheduler: Scheduler,
        clock: Clock = time.monotonic,
    ) -> None:
        super().__init__(serf, metrics=metrics, scheduler=scheduler, clock=clock)
        self.objects: KubeObjects | None = None
        self.last_plan: dict[str, object] = import_status(None)
        self._last_notes: tuple[str, ...] = ()

    def enabled(self, settings: Settings) -> bool:
        return settings.import_services

    def attach_kube(self, kube: KubeClient | None, cache: KubeCache | None) -> None:
        super().attach_kube(kube, cache)
        self.objects = None
        if kube is not None:  # the adapter is loaded already: its writes cost nothing more
            from serfbridge.kube_writes import KubeObjects

            self.objects = KubeObjects(kube)

    def apply(
        self, settings: Settings, serf_view: bridge.SerfView, *, kube_view: bridge.KubeView
    ) -> tuple[int, bool]:
        if self.objects is not None:
            self.objects.slice_version = kube_view.slice_version
        plan, writes = bridge.import_pass(
            serf_view, kube_view, kube=self.objects, settings=settings, cache=self.cache
        )
        self._record(plan)
        return writes, kube_view.synced

    def _record(self, plan: ImportPlan) -> None:
        self.last_plan = import_status(plan)
        for kind in ("services", "endpoint_slices"):
            self.metrics.imported.labels(kind).set(plan.counts.get(kind, 0))
        self.metrics.import_skipped.clear()
        for reason, count in plan.skipped.items():
            self.metrics.import_skipped.labels(reason).set(count)
        self.metrics.import_refused.set(len(plan.refused))
        if plan.notes != self._last_notes:
            for note in plan.notes:
                log.info("imports: %s", note)
            self._last_notes = plan.notes


def import_status(plan: ImportPlan | None) -> dict[str, object]:
    """The ``/status`` imports block of one plan (None: before the first pass)."""
    if plan is None:
        return {"services": 0, "endpoint_slices": 0, "skipped": {}, "refused": [], "writer": None}
    return {
        "services": plan.counts.get("services", 0),
        "endpoint_slices": plan.counts.get("endpoint_slices", 0),
        "skipped": dict(plan.skipped),
        "refused": list(plan.refused),
        "writer": plan.writer,
    }
