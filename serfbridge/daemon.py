"""``serfbridge run``: both directions, level-triggered, debounced, restart-safe.

Threads (one concurrency model, like the rest of the package):

* the main loop runs the passes (``bridge.label_pass`` / ``bridge.publish_pass``) when a
  direction's ``Trigger`` is due, pokes both on every resync, and feeds systemd's
  watchdog;
* a Serf follower reads the agent's member events from an RPC ``stream`` (the client
  re-dials and re-subscribes by itself); a reconnect means the agent may have restarted
  with no tags, so to-serf runs at once;
* a Kubernetes watcher pokes the directions when the cache changes or its ``synced`` flips;
* the handler socket takes events handed over by ``serfbridge handle``;
* the health server serves /healthz, /readyz, /metrics and /status.

Every input only *pokes*; the passes always read the truth afresh. Must not: plan
anything itself, or write while the Kubernetes view is partial (``bridge`` checks).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from types import FrameType
from typing import Any

import sdnotify

from serfbridge import bridge, localpeers
from serfbridge.config import Settings
from serfbridge.errors import KubeError, RPCError, SerfBridgeError
from serfbridge.failure_hold import FailureHold
from serfbridge.handoff import HandOff
from serfbridge.handoff_server import HandoffServer
from serfbridge.health import HealthServer, Metrics
from serfbridge.plan_events import EventKey
from serfbridge.plan_labels import K8S_TAG
from serfbridge.rpc.client import SerfClient
from serfbridge.rpc.models import Member, MemberEvent, Reconnected

log = logging.getLogger(__name__)
MEMBER_FILTER = "member-join,member-leave,member-failed,member-update,member-reap"
DIRECTIONS = ("to-k8s", "to-serf")


@dataclass
class Trigger:
    """Debounce: due ``quiet`` seconds after the last poke, or ``max_wait`` after the first."""

    quiet: float
    max_wait: float
    first: float | None = None
    last: float | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def poke(self, *, urgent: bool = False) -> None:
        now = time.monotonic()
        with self.lock:
            self.first = self.first if self.first is not None else now
            self.last = now
            if urgent:
                self.first = now - self.max_wait

    def due_in(self) -> float | None:
        with self.lock:
            if self.first is None or self.last is None:
                return None
            due = min(self.last + self.quiet, self.first + self.max_wait)
        return max(0.0, due - time.monotonic())

    def take(self) -> None:
        with self.lock:
            self.first = self.last = None


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        reload: Callable[[], Settings] | None = None,
        kube_factory: Callable[[Settings], Any] | None = None,
    ) -> None:
        self.settings = settings
        self._reload = reload
        self._kube_factory = kube_factory
        self.metrics = Metrics()
        self.triggers = {d: Trigger(settings.debounce, settings.max_wait) for d in DIRECTIONS}
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = False
        self._notifier = sdnotify.SystemdNotifier()
        self._ready_sent = False
        self._last_ok: dict[str, float] = {}
        self._last_error: dict[str, str] = {}
        self._self_member = ""
        self._last_skipped: dict[str, int] = {}
        self._failed_since: dict[str, float] = {}
        self._error_logged: dict[str, float] = {}
        self._recheck_at: float | None = None
        self._last_notes: tuple[str, ...] = ()
        self._last_plan: dict[str, object] = {}
        self._reported: frozenset[EventKey] = frozenset()  # Events sent (bridge.plan_events)
        self.trusted = localpeers.trusted_uids(settings.agent_users)
        self.serf = SerfClient(
            settings.rpc_addr,
            auth_key=settings.rpc_auth,
            trusted_uids=self.trusted,
            tag_limit=settings.tag_limit,
            connect_attempts=1,
            timeout=10.0,
        )
        self.kube: Any = None
        self.cache: Any = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        s = self.settings
        # The listeners first: a bad --handler-socket or --http-addr is one line and exit 2,
        # before the Kubernetes client has started talking (and logging) in the background.
        listener = HandoffServer(
            s.handler_socket,
            self._on_handoff,
            trusted=self.trusted,
            open_to_others=bool(s.agent_users),
            on_refused=lambda reason: self.metrics.refused.labels("handler", reason).inc(),
        ).start()
        try:
            health = HealthServer(
                s.http_addr, self.metrics, ready=self.ready, status=self.status
            ).start()
        except BaseException:
            listener.stop()
            raise
        self.metrics.budget.labels("limit").set(s.tag_limit)
        if self._kube_factory is not None:
            self.kube, self.cache = self._kube_factory(s)
            cache = self.cache  # the gauge is read at scrape time, never stale
            self.metrics.kube_synced.set_function(lambda: 1.0 if cache.synced else 0.0)
        self._spawn(self._follow_serf, "serf-follower")
        if self.cache is not None:
            self._spawn(self._follow_kube, "kube-follower")
        log.info(
            "serfbridge running for node %s (cluster %s): to-serf=%s to-k8s=%s, "
            "http %s, handler socket %s",
            s.node_name,
            s.cluster,
            s.to_serf,
            s.to_k8s,
            s.http_addr,
            s.handler_socket,
        )
        try:
            self._main_loop()
        finally:
            self._shutdown(health, listener)
        return 0

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # tests run the daemon in a thread; they call stop() instead

        def on_term(signum: int, frame: FrameType | None) -> None:
            self.stop()

        def on_hup(signum: int, frame: FrameType | None) -> None:
            self._reload_requested = True
            self._wake.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    def _shutdown(self, health: HealthServer, listener: HandoffServer) -> None:
        self._notifier.notify("STOPPING=1")
        listener.stop()
        if self.cache is not None:
            self.cache.stop(timeout=2)
        self.serf.close()
        health.stop()
        log.info("serfbridge stopped")

    # --- the main loop ----------------------------------------------------------------------

    def _main_loop(self) -> None:
        for trigger in self.triggers.values():
            trigger.poke(urgent=True)
        next_resync = time.monotonic() + self.settings.resync
        while not self.stopping.is_set():
            if self._reload_requested:
                self._apply_reload()  # a shorter resync counts from now, not after the old one
                next_resync = min(next_resync, time.monotonic() + self.settings.resync)
            if self._recheck_at is not None and time.monotonic() >= self._recheck_at:
                self._recheck_at = None  # a held-back failure is now old enough to act on
                self.poke("to-k8s", urgent=True)
            if time.monotonic() >= next_resync:
                next_resync = time.monotonic() + self.settings.resync
                for trigger in self.triggers.values():
                    trigger.poke()
            for direction in DIRECTIONS:
                if self.triggers[direction].due_in() == 0.0:
                    self.triggers[direction].take()
                    self._run_pass(direction)
            self._notifier.notify("WATCHDOG=1")
            self._maybe_ready()
            waits = [t.due_in() for t in self.triggers.values()]
            timeout = min(
                [w for w in waits if w is not None]
                + [1.0, max(0.0, next_resync - time.monotonic())]
                + ([max(0.0, self._recheck_at - time.monotonic())] if self._recheck_at else [])
            )
            self._wake.wait(timeout)
            self._wake.clear()

    def poke(self, direction: str, *, urgent: bool = False) -> None:
        self.triggers[direction].poke(urgent=urgent)
        self._wake.set()

    def _run_pass(self, direction: str) -> None:
        s = self.settings
        if (direction == "to-k8s" and not s.to_k8s) or (direction == "to-serf" and not s.to_serf):
            return
        cpu = time.thread_time()
        try:
            self._pass(direction)
        finally:
            self.metrics.passes.labels(direction).inc()
            self.metrics.pass_cpu.labels(direction).inc(max(0.0, time.thread_time() - cpu))

    def _pass(self, direction: str) -> None:
        s = self.settings
        try:
            serf_view = bridge.read_serf(self.serf)
            self._self_member = serf_view.self_member
            self.metrics.rpc_connected.set(1)
            view = self._kube_view()
            if direction == "to-k8s":
                # MERGE: call-site only; the daemon helper keeps LabelPlan.hold instead.
                self._unsettled_failures(serf_view.members)  # keeps _failed_since, _recheck_at
                label_plan, writes = bridge.label_pass(
                    serf_view,
                    view,
                    self.kube,
                    s,
                    cache=self.cache,
                    hold=FailureHold(s.failure_hold, time.monotonic(), self._failed_since),
                )
                self._count_rejects(dict(label_plan.skipped))
                if label_plan.notes != self._last_notes:
                    for note in label_plan.notes:
                        log.warning("to-k8s: %s", note)
                    self._last_notes = label_plan.notes
                ok = view.synced
            else:
                plan, writes = bridge.publish_pass(
                    self.serf,
                    serf_view,
                    view,
                    self.kube,
                    s,
                    cache=self.cache,
                    reported=self._reported if self.kube is not None else None,
                )
                self._record_publish(plan, view)
                ok = True
        except SerfBridgeError as exc:
            self._on_error(direction, exc)
            return
        self.metrics.writes.labels(direction).inc(writes)
        if ok:
            self._last_ok[direction] = time.time()
            if self._last_error.pop(direction, None) is not None:
                log.info("%s pass succeeded again", direction)
            self.metrics.last_sync.labels(direction).set(self._last_ok[direction])

    def _unsettled_failures(self, members: Sequence[Member]) -> set[str]:
        """Failed members seen failed for less than --failure-hold; re-check when it ends."""
        now = time.monotonic()
        failed = {m.name for m in members if m.status == "failed"}
        self._failed_since = {n: self._failed_since.get(n, now) for n in failed}
        waiting = {
            n: t + self.settings.failure_hold - now
            for n, t in self._failed_since.items()
            if now - t < self.settings.failure_hold
        }
        if waiting:
            self._recheck_at = now + min(waiting.values())
        return set(waiting)

    def _count_rejects(self, skipped: dict[str, int]) -> None:
        """Gossip that cannot become labels: counted, and logged when it changes."""
        if skipped != self._last_skipped:
            if skipped:
                log.warning("gossip skipped (not valid label syntax or not allowed): %s", skipped)
            self._last_skipped = skipped
            for reason, count in skipped.items():
                self.metrics.gossip_rejects.labels(reason).inc(count)

    def _record_publish(self, plan: Any, view: bridge.KubeView) -> None:
        self.metrics.budget.labels("used").set(plan.budget_used)
        self.metrics.not_published.set(len(plan.left_out))
        self._last_plan = {
            "publishes": [e.to_wire() for e in plan.entries],
            "left_out": [vars(lo) for lo in plan.left_out],
            "budget_used": plan.budget_used,
            "problems": list(plan.problems),
        }
        if self.kube is not None and view.synced:  # also when empty: resets what was sent
            self._reported = plan.events.sent
            self.metrics.kube_events.inc(plan.events_created)

    def _on_error(self, direction: str, exc: SerfBridgeError) -> None:
        kind = type(exc).__name__
        self.metrics.errors.labels(kind).inc()
        if isinstance(exc, RPCError):
            self.metrics.rpc_connected.set(0)
        text = f"{kind}: {exc}"
        now = time.monotonic()
        repeat = self._last_error.get(direction) == text
        self._last_error[direction] = text
        # Retries are quick (the agent may be back any moment), so the log says a failure
        # once, then only once a minute while it lasts, not at every retry.
        if not repeat or now - self._error_logged.get(direction, 0.0) >= 60:
            log.warning(
                "%s pass failed: %s%s",
                direction,
                exc,
                " (still failing; retrying)" if repeat else "",
            )
            self._error_logged[direction] = now
        if exc.temporary or isinstance(exc, KubeError | RPCError):
            self.triggers[direction].poke()  # retried after the quiet period

    def _kube_view(self) -> bridge.KubeView:
        if self.cache is None:
            return bridge.KubeView(nodes={}, synced=False)
        synced = bool(self.cache.synced)
        return bridge.KubeView(
            nodes=self.cache.nodes(),
            services=self.cache.services(),
            slices=self.cache.endpoint_slices(),
            synced=synced,
        )

    # --- readiness, status, reload ------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.cache is not None and not self.cache.synced:
            return False, "kubernetes cache not synced"
        enabled = [
            d
            for d in DIRECTIONS
            if (d == "to-k8s" and self.settings.to_k8s)
            or (d == "to-serf" and self.settings.to_serf)
        ]
        missing = [d for d in enabled if d not in self._last_ok or d in self._last_error]
        if missing:
            errors = "; ".join(self._last_error.get(d, "no pass yet") for d in missing)
            return False, f"not synced: {', '.join(missing)} ({errors})"
        return True, "ready"

    def _maybe_ready(self) -> None:
        if not self._ready_sent and self.ready()[0]:
            self._ready_sent = True
            self._notifier.notify("READY=1")
            log.info("first sync complete: ready")

    def status(self) -> dict[str, object]:
        ok, why = self.ready()
        return {
            "node": self.settings.node_name,
            "cluster": self.settings.cluster,
            "self_member": self._self_member,
            "ready": ok,
            "reason": why,
            "last_sync": dict(self._last_ok),
            "errors": dict(self._last_error),
            "tag_limit": self.settings.tag_limit,
            "resync": self.settings.resync,
            **self._last_plan,
        }

    def _apply_reload(self) -> None:
        self._reload_requested = False
        if self._reload is None:
            return
        try:
            new = self._reload()
        except SerfBridgeError as exc:
            log.error("SIGHUP: config not reloaded: %s", exc)
            return
        fixed = (
            "rpc_addr",
            "rpc_auth",
            "tag_limit",
            "http_addr",
            "handler_socket",
            "agent_users",
            "kubeconfig",
            "node_name",
        )  # the open client, listeners and cache use these
        changed = [k for k in fixed if getattr(new, k) != getattr(self.settings, k)]
        if changed:
            log.warning("SIGHUP: %s change only after a restart", ", ".join(changed))
            new = _keep(new, self.settings, fixed)
        self.settings = new
        for trigger in self.triggers.values():
            trigger.quiet, trigger.max_wait = new.debounce, new.max_wait
        log.info("SIGHUP: config reloaded (resync %.0fs, debounce %.2fs)", new.resync, new.debounce)
        for trigger in self.triggers.values():
            trigger.poke(urgent=True)

    # --- inputs -------------------------------------------------------------------------------

    def _follow_serf(self) -> None:
        delay = 0.1
        while not self.stopping.is_set():
            try:
                with self.serf.stream(MEMBER_FILTER) as events:
                    delay = 0.1
                    self.poke("to-serf", urgent=True)  # (re)connected: assert our tags now
                    self._read_events(events)
            except RPCError as exc:
                self.metrics.rpc_connected.set(0)
                log.debug("serf stream: %s; retrying in %.1fs", exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 1.0)

    def _read_events(self, events: Any) -> None:
        dropped = 0
        while not self.stopping.is_set() and not events.done:
            item = events.get(timeout=0.5)
            if events.dropped > dropped:
                self.metrics.events_dropped.inc(events.dropped - dropped)
                dropped = events.dropped
            if isinstance(item, Reconnected):
                log.info("serf agent connection re-established; re-asserting tags")
                self.metrics.rpc_connected.set(1)
                self.poke("to-serf", urgent=True)
                self.poke("to-k8s")
            elif isinstance(item, MemberEvent):
                self.poke("to-k8s")
                if any(m.name == self._self_member and K8S_TAG not in m.tags for m in item.members):
                    self.poke("to-serf", urgent=True)  # our tags are gone: agent restarted
                else:
                    self.poke("to-serf")  # placement follows membership

    def _follow_kube(self) -> None:
        version = 0
        while not self.stopping.is_set():
            new = self.cache.wait_for_change(version, 0.5)
            if new != version:  # any change, or `synced` flipped: both directions look again
                version = new
                self.poke("to-serf")
                self.poke("to-k8s")

    def _on_handoff(self, request: HandOff) -> None:
        self.poke("to-k8s")
        self.poke("to-serf")  # placement follows membership
        shown = ", ".join(request.members[:5]) + (", ..." if request.count > 5 else "")
        log.info(
            "event handed over by the handler: %s (%d member(s)%s)",
            request.event,
            request.count,
            f": {shown}" if shown else "",
        )


def _keep(new: Settings, old: Settings, names: tuple[str, ...]) -> Settings:
    return replace(new, **{k: getattr(old, k) for k in names})
