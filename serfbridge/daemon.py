"""``serfbridge run``: both directions, level-triggered, debounced, restart-safe.

This module only wires the parts together and owns the lifecycle (threads (one
concurrency model, like the rest of the package), signals, readiness, ``/status`` and
SIGHUP reload):

* the main loop asks the ``scheduler`` which directions are due and runs their
  ``passes`` runner, resumes a direction stopped by a permanent error at every resync,
  and feeds systemd's watchdog;
* the ``followers`` turn Serf member events and Kubernetes cache changes into pokes;
* the ``handoff`` server takes events handed over by ``serfbridge handle``;
* the ``health`` server serves /healthz, /readyz, /metrics and /status.

Every input only *pokes*; the passes always read the truth afresh. Must not: plan
anything itself, or write while the Kubernetes view is partial (``bridge`` checks).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import replace
from types import FrameType
from typing import TYPE_CHECKING

import sdnotify

from serfbridge import localpeers
from serfbridge.config import Settings
from serfbridge.errors import SerfBridgeError
from serfbridge.followers import KubeFollower, SerfFollower, poke_imports
from serfbridge.handoff import HandOff, HandoffServer
from serfbridge.health import HealthServer, Metrics
from serfbridge.passes import ImportRunner, LabelRunner, PassRunner, PublishRunner
from serfbridge.rpc.client import SerfClient
from serfbridge.scheduler import Scheduler

if TYPE_CHECKING:
    from serfbridge.kube import KubeClient
    from serfbridge.kube_cache import KubeCache

    KubeFactory = Callable[[Settings], tuple[KubeClient, KubeCache]]

log = logging.getLogger(__name__)
_MEMBERS_LOGGED = 5  # a handed-over event names its first few members in the log line
#: Settings the open client, the listeners and the cache use: a SIGHUP cannot change them.
FIXED_SETTINGS = (
    "rpc_addr",
    "rpc_auth",
    "tag_limit",
    "http_addr",
    "handler_socket",
    "agent_users",
    "kubeconfig",
    "node_name",
    "import_services",  # the scheduler's directions are set at start
)


class SystemdNotify:
    """sd_notify, opened in ``run`` and closed at shutdown; nothing at all without
    ``$NOTIFY_SOCKET`` (sdnotify would open a socket then and leak it)."""

    def __init__(self) -> None:
        self._notifier: sdnotify.SystemdNotifier | None = None

    def open(self) -> None:
        if os.environ.get("NOTIFY_SOCKET") and self._notifier is None:
            self._notifier = sdnotify.SystemdNotifier()

    def notify(self, state: str) -> None:
        if self._notifier is not None:
            self._notifier.notify(state)

    def close(self) -> None:
        if self._notifier is not None and self._notifier.socket is not None:
            self._notifier.socket.close()
        self._notifier = None


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        reload: Callable[[], Settings] | None = None,
        kube_factory: KubeFactory | None = None,
    ) -> None:
        self.settings = settings
        self._reload = reload
        self._kube_factory = kube_factory
        self.metrics = Metrics()
        self.stopping = threading.Event()
        self._reload_requested = False
        self._notifier = SystemdNotify()
        self._ready_sent = False
        self.trusted = localpeers.trusted_uids(settings.agent_users)
        self.serf = SerfClient(
            settings.rpc_addr,
            auth_key=settings.rpc_auth,
            trusted_uids=self.trusted,
            tag_limit=settings.tag_limit,
            connect_attempts=1,
            timeout=10.0,
        )
        self.scheduler = Scheduler(
            ("to-k8s", "to-serf", *(("imports",) if settings.import_services else ())),
            quiet=settings.debounce,
            max_wait=settings.max_wait,
            resync=settings.resync,
        )
        self.labels = LabelRunner(self.serf, metrics=self.metrics, scheduler=self.scheduler)
        self.publish = PublishRunner(self.serf, metrics=self.metrics, scheduler=self.scheduler)
        self.imports = ImportRunner(self.serf, metrics=self.metrics, scheduler=self.scheduler)
        self.runners: tuple[PassRunner, ...] = (self.labels, self.publish, self.imports)
        self.kube: KubeClient | None = None
        self.cache: KubeCache | None = None
        self._threads: list[threading.Thread] = []

    # --- lifecycle ------------------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        s = self.settings
        # The listeners first: a bad --handler-socket or --http-addr is one line and exit 2,
        # before the Kubernetes client has started talking (and logging) in the background.
        listener, health = self._start_listeners()
        self.metrics.budget.labels("limit").set(s.tag_limit)
        self._notifier.open()
        self._start_kube()
        self._start_followers()
        log.info(
            "serfbridge running for node %s (cluster %s): to-serf=%s to-k8s=%s imports=%s, "
            "http %s, handler socket %s",
            s.node_name,
            s.cluster,
            s.to_serf,
            s.to_k8s,
            s.import_services,
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
        self.scheduler.wake.set()

    def _start_listeners(self) -> tuple[HandoffServer, HealthServer]:
        s = self.settings
        listener = HandoffServer(
            s.handler_socket,
            self._on_handoff,
            trusted=self.trusted,
            open_to_others=bool(s.agent_users),
            on_refused=lambda reason: self.metrics.refused.labels("handler", reason).inc(),
        ).start()
        try:
            health = HealthServer(s.http_addr, self.metrics, ready=self.ready, status=self.status)
        except BaseException:
            listener.stop()
            raise
        return listener, health.start()

    def _start_kube(self) -> None:
        if self._kube_factory is None:
            return
        self.kube, cache = self._kube_factory(self.settings)
        self.cache = cache
        for runner in self.runners:
            runner.attach_kube(self.kube, cache)
        # The gauge is read at scrape time, never stale.
        self.metrics.kube_synced.set_function(lambda: 1.0 if cache.synced else 0.0)

    def _start_followers(self) -> None:
        serf = SerfFollower(
            self.serf,
            scheduler=self.scheduler,
            metrics=self.metrics,
            stopping=self.stopping,
            self_member=self.self_member,
            idle=lambda: self.settings.resync,
        )
        self._spawn(serf.run, "serf-follower")
        if self.cache is not None:
            kube = KubeFollower(self.cache, scheduler=self.scheduler, stopping=self.stopping)
            self._spawn(kube.run, "kube-follower")

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
            self.scheduler.wake.set()

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGINT, on_term)
        signal.signal(signal.SIGHUP, on_hup)

    def _shutdown(self, health: HealthServer, listener: HandoffServer) -> None:
        self._notifier.notify("STOPPING=1")
        self._notifier.close()
        listener.stop()
        if self.cache is not None:
            self.cache.stop(timeout=2)
        self.serf.close()
        health.stop()
        log.info("serfbridge stopped")

    # --- the main loop ----------------------------------------------------------------------

    def _main_loop(self) -> None:
        self.scheduler.poke_all(urgent=True)
        while not self.stopping.is_set():
            if self._reload_requested:
                self._apply_reload()
            due = self.scheduler.take_due()
            if due.resync:
                for runner in self.runners:
                    runner.resume()  # a permanent error is looked at again once a resync
            for runner in self.runners:
                if runner.direction in due.directions:
                    runner.run(self.settings)
            self._notifier.notify("WATCHDOG=1")
            self._maybe_ready()
            self.scheduler.wait()

    def _on_handoff(self, request: HandOff) -> None:
        self.scheduler.poke("to-k8s")
        self.scheduler.poke("to-serf")  # placement follows membership
        poke_imports(self.scheduler)
        shown = ", ".join(request.members[:_MEMBERS_LOGGED]) + (
            ", ..." if request.count > _MEMBERS_LOGGED else ""
        )
        log.info(
            "event handed over by the handler: %s (%d member(s)%s)",
            request.event,
            request.count,
            f": {shown}" if shown else "",
        )

    # --- readiness, status, reload ------------------------------------------------------------

    def ready(self) -> tuple[bool, str]:
        if self.cache is not None and not self.cache.synced:
            return False, "kubernetes cache not synced"
        problems = {
            r.direction: r.maybe_problem() for r in self.runners if r.enabled(self.settings)
        }
        missing = {d: why for d, why in problems.items() if why is not None}
        if missing:
            return False, f"not synced: {', '.join(missing)} ({'; '.join(missing.values())})"
        return True, "ready"

    def self_member(self) -> str:
        """Our own member's name, as the last pass of either direction read it."""
        return self.labels.self_member or self.publish.self_member

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
            "self_member": self.self_member(),
            "ready": ok,
            "reason": why,
            "last_sync": {r.direction: r.last_ok for r in self.runners if r.last_ok is not None},
            "errors": {r.direction: r.last_error for r in self.runners if r.last_error},
            "stopped": [r.direction for r in self.runners if r.stopped],
            "tag_limit": self.settings.tag_limit,
            "resync": self.settings.resync,
            **self.publish.last_plan,
            "imports": self.imports.last_plan,
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
        changed = [k for k in FIXED_SETTINGS if getattr(new, k) != getattr(self.settings, k)]
        if changed:
            log.warning("SIGHUP: %s change only after a restart", ", ".join(changed))
            new = replace(new, **{k: getattr(self.settings, k) for k in FIXED_SETTINGS})
        self.settings = new
        self.scheduler.retune(quiet=new.debounce, max_wait=new.max_wait, resync=new.resync)
        log.info("SIGHUP: config reloaded (resync %.0fs, debounce %.2fs)", new.resync, new.debounce)
        for runner in self.runners:
            runner.resume()
        self.scheduler.poke_all(urgent=True)
