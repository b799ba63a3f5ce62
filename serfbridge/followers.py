"""The daemon's two followers: threads that turn Serf events and cache changes into pokes.

* ``SerfFollower`` reads the agent's member events from an RPC stream (the client
  re-dials and re-subscribes by itself). A reconnect means the agent may have restarted
  with no tags, so to-serf is poked urgently; so is a member event showing our own
  member without our tags. A temporary error re-subscribes after a short backoff; after
  a permanent one (auth, protocol) it waits ``idle`` seconds (the passes report it).
* ``KubeFollower`` waits on the cache's version and pokes both directions when the
  cache changes or its ``synced`` flag flips.

Callers: ``daemon``. Must not: run a pass or read anything beyond the event itself:
every input only pokes, and the passes read the truth afresh.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from serfbridge.errors import RPCError
from serfbridge.health import Metrics
from serfbridge.member_events import MEMBER_FILTER
from serfbridge.plan_labels import K8S_TAG
from serfbridge.rpc.client import SerfClient, Stream
from serfbridge.rpc.models import MemberEvent, Reconnected, StreamItem
from serfbridge.scheduler import Scheduler

if TYPE_CHECKING:
    from serfbridge.kube_cache import KubeCache

log = logging.getLogger("serfbridge.daemon")
#: Backoff between re-subscribing after a temporary error: from the first to the last.
BACKOFF = (0.1, 1.0)


class SerfFollower:
    """Member events -> pokes. ``self_member`` says which member is ours (learnt by a pass)."""

    def __init__(
        self,
        serf: SerfClient,
        *,
        scheduler: Scheduler,
        metrics: Metrics,
        stopping: threading.Event,
        self_member: Callable[[], str],
        idle: Callable[[], float],
    ) -> None:
        self.serf = serf
        self.scheduler = scheduler
        self.metrics = metrics
        self.stopping = stopping
        self._self_member = self_member
        self._idle = idle

    def run(self) -> None:
        delay = BACKOFF[0]
        while not self.stopping.is_set():
            try:
                with self.serf.stream(MEMBER_FILTER) as events:
                    delay = BACKOFF[0]
                    self.scheduler.poke("to-serf", urgent=True)  # (re)connected: assert tags
                    self._read(events)
            except RPCError as exc:
                self.metrics.rpc_connected.set(0)
                self.stopping.wait(self._delay_after(exc, delay))
                delay = min(delay * 2, BACKOFF[1])

    def _delay_after(self, exc: RPCError, delay: float) -> float:
        # DEBUG only: the passes use the same client and report the error (at ERROR when
        # it is permanent) with the status and readiness that go with it.
        if exc.retry_after is None:
            log.debug("serf stream: %s; permanent, re-subscribing in %.0fs", exc, self._idle())
            return self._idle()
        log.debug("serf stream: %s; retrying in %.1fs", exc, delay)
        return max(delay, exc.retry_after)

    def _read(self, events: Stream) -> None:
        dropped = 0
        while not self.stopping.is_set() and not events.done:
            item = events.get(timeout=0.5)
            if events.dropped > dropped:
                self.metrics.events_dropped.inc(events.dropped - dropped)
                dropped = events.dropped
            self._on_item(item)

    def _on_item(self, item: StreamItem | None) -> None:
        if isinstance(item, Reconnected):
            log.info("serf agent connection re-established; re-asserting tags")
            self.metrics.rpc_connected.set(1)
            self.scheduler.poke("to-serf", urgent=True)
            self.scheduler.poke("to-k8s")
            poke_imports(self.scheduler)
        elif isinstance(item, MemberEvent):
            self.scheduler.poke("to-k8s")
            poke_imports(self.scheduler)  # members' services tags are the import sources
            me = self._self_member()
            if any(m.name == me and K8S_TAG not in m.tags for m in item.members):
                self.scheduler.poke("to-serf", urgent=True)  # our tags are gone: restarted
            else:
                self.scheduler.poke("to-serf")  # placement follows membership


class KubeFollower:
    """Cache changes (and ``synced`` flips) -> a poke of both directions."""

    def __init__(
        self, cache: KubeCache, *, scheduler: Scheduler, stopping: threading.Event
    ) -> None:
        self.cache = cache
        self.scheduler = scheduler
        self.stopping = stopping

    def run(self) -> None:
        version = 0
        while not self.stopping.is_set():
            new = self.cache.wait_for_change(version, 0.5)
            if new != version:  # any change, or `synced` flipped: both directions look again
                version = new
                self.scheduler.poke("to-serf")
                self.scheduler.poke("to-k8s")
                poke_imports(self.scheduler)


def poke_imports(scheduler: Scheduler) -> None:
    """Poke the imports direction, which the scheduler has only when ``--import`` is on."""
    if "imports" in scheduler.triggers:
        scheduler.poke("imports")
