"""The watched cache of Nodes, Services and EndpointSlices, built on list+watch.

Role: one thread per kind lists, then watches from the listed resourceVersion (with
bookmarks), relists on 410 Gone and after any watch failure with a capped, jittered
backoff, and replaces its store atomically on every relist, reporting only real
differences. ``synced`` is true only after a complete list of every kind and false while
a relist is underway or the API is unreachable. Callers: the daemon, ``sync``,
``status`` (all through ``bridge.read_kube``), the bridge's applier (``note_patched``,
so the next pass sees our own write before its watch event), tests and the bench.

Must not: empty the store on an outage (no consumer is ever told "everything was
deleted"), decide anything, or import ``kubernetes`` (requests go through ``kube``,
which knows nothing of this cache).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import TypeVar, cast

from serfbridge.errors import Expired, KubeNotFound, KubeUnavailable, SerfBridgeError
from serfbridge.kube import KubeClient, WatchStream
from serfbridge.kube_json import (
    DISCOVERY,
    Json,
    metadata_of,
    object_key,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)
from serfbridge.kubemodels import KubeObject, NodeInfo, ServiceInfo, SliceInfo

log = logging.getLogger(__name__)

T = TypeVar("T", NodeInfo, ServiceInfo, SliceInfo)


@dataclass(frozen=True)
class Change:
    """One real change in the cache: ``old`` None = added, ``new`` None = deleted."""

    kind: str
    key: str
    old: KubeObject | None
    new: KubeObject | None


@dataclass(frozen=True)
class _Kind:
    name: str
    paths: tuple[str, ...]  # preferred first; a 404 on list moves to the next
    parse: Callable[[Json], KubeObject]


_SLICE_PATHS = (
    f"/apis/{DISCOVERY}/v1/endpointslices",
    f"/apis/{DISCOVERY}/v1beta1/endpointslices",
)
KINDS = (
    _Kind("nodes", ("/api/v1/nodes",), parse_node),
    _Kind("services", ("/api/v1/services",), parse_service),
    _Kind("endpointslices", _SLICE_PATHS, parse_endpoint_slice),
)


class KubeCache:
    """List+watch of Nodes, Services and EndpointSlices, one thread per kind.

    ``synced`` is true only while every kind has completed a list and its watch has not
    failed since. ``on_change`` runs on a watcher thread with the cache locked (keep it
    short; the tests observe the cache through it); ``version``/``wait_for_change`` serve
    pollers.
    """

    def __init__(
        self,
        client: KubeClient,
        *,
        on_change: Callable[[Change], None] | None = None,
        watch_timeout: int = 300,
        max_backoff: float = 8.0,
    ) -> None:
        self.client = client
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self._cond = threading.Condition(threading.RLock())
        self._stores: dict[str, dict[str, KubeObject]] = {k.name: {} for k in KINDS}
        self._listed = dict.fromkeys(self._stores, False)
        self._paths = {k.name: 0 for k in KINDS}
        self._version = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: dict[str, WatchStream] = {}

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> KubeCache:
        for kind in KINDS:
            thread = threading.Thread(
                target=self._run, args=(kind,), daemon=True, name=f"kube-watch-{kind.name}"
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        for stream in list(self._streams.values()):
            stream.shutdown()
        for thread in self._threads:
            thread.join(timeout)

    # --- state for consumers ----------------------------------------------------------

    @property
    def synced(self) -> bool:
        with self._cond:
            return all(self._listed.values())

    @property
    def version(self) -> int:
        """Bumped on every change and every change of ``synced``."""
        with self._cond:
            return self._version

    def wait_synced(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: all(self._listed.values()), timeout)

    def wait_for_change(self, since: int, timeout: float) -> int:
        """Block until ``version`` exceeds ``since`` (or timeout); returns ``version``."""
        with self._cond:
            self._cond.wait_for(lambda: self._version > since, timeout)
            return self._version

    def nodes(self) -> dict[str, NodeInfo]:
        return self._snapshot("nodes", NodeInfo)

    def services(self) -> dict[str, ServiceInfo]:
        """Keyed ``namespace/name``."""
        return self._snapshot("services", ServiceInfo)

    def endpoint_slices(self) -> dict[str, SliceInfo]:
        """Keyed ``namespace/name`` of the slice (``service_name`` links it)."""
        return self._snapshot("endpointslices", SliceInfo)

    def note_patched(
        self,
        name: str,
        *,
        labels: Mapping[str, str | None],
        annotations: Mapping[str, str | None],
    ) -> None:
        """Write a merge patch we sent into the stored Node, before its watch event.

        So a pass that runs before the event arrives does not send the patch again; the
        event (or a relist) then brings the server's whole truth. Bumps ``version`` as
        the event would have.
        """
        with self._cond:
            node = self._stores["nodes"].get(name)
            if not isinstance(node, NodeInfo):
                return
            patched = dataclasses.replace(
                node,
                labels=_merged(node.labels, labels),
                annotations=_merged(node.annotations, annotations),
            )
            self._replace_one("nodes", name, old=node, new=patched)

    @property
    def slice_version(self) -> str:
        """The ``discovery.k8s.io`` version EndpointSlices are listed at: ``v1`` until a
        list finds the server lacks it (``v1beta1`` on a 1.20 server)."""
        with self._cond:
            return _SLICE_PATHS[self._paths["endpointslices"]].split("/")[3]

    def note_written(self, kind: str, *, key: str, obj: KubeObject | None) -> None:
        """Store an object we created or replaced (None: deleted) before its watch event,
        so a pass that runs first does not write it again. ``kind`` is ``services`` or
        ``endpointslices``; ``key`` is ``namespace/name``."""
        with self._cond:
            self._replace_one(kind, key, old=self._stores[kind].get(key), new=obj)

    def _snapshot(self, kind: str, cls: type[T]) -> dict[str, T]:
        with self._cond:
            return cast(dict[str, T], dict(self._stores[kind]))

    # --- the list+watch loop ----------------------------------------------------------

    def _run(self, kind: _Kind) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                resource_version = self._relist(kind)
                failures = 0
                while not self._stop.is_set():
                    resource_version = self._watch(kind, resource_version)
            except Exception as exc:  # KubeError, or a bug: either way relist after a pause
                self._set_listed(kind.name, False)
                failures += 1
                delay = self._retry_delay(exc, failures)
                if not self._stop.is_set():
                    level = logging.WARNING if _temporary(exc) else logging.ERROR
                    log.log(level, "kube %s: %s; relisting in %.1fs", kind.name, exc, delay)
                self._stop.wait(delay)

    def _retry_delay(self, exc: Exception, failures: int) -> float:
        """Retry as a value: a temporary error backs off from its ``retry_after``; a
        permanent one (forbidden, auth) waits the longest backoff every time. Trying
        fast cannot help it, but an RBAC fix must still be picked up without a restart."""
        backoff = min(self.max_backoff, 0.25 * 2.0 ** min(failures, 16))
        if not _temporary(exc):
            backoff = self.max_backoff
        elif isinstance(exc, SerfBridgeError) and exc.retry_after:
            backoff = max(backoff, exc.retry_after)
        return backoff * random.uniform(0.75, 1.0)

    def _relist(self, kind: _Kind) -> str:
        while True:
            path = kind.paths[self._paths[kind.name]]
            try:
                reply = self.client.request("GET", path, verb="list", resource=kind.name)
                break
            except KubeNotFound:  # e.g. discovery.k8s.io/v1 on a 1.20 server
                if self._paths[kind.name] + 1 >= len(kind.paths):
                    raise
                self._paths[kind.name] += 1
        fresh = {object_key(obj): obj for obj in map(kind.parse, reply.get("items") or ())}
        self._replace(kind.name, fresh)
        return str(metadata_of(reply).get("resourceVersion", ""))

    def _watch(self, kind: _Kind, resource_version: str) -> str:
        """Follow one watch until the server ends it; returns the last resourceVersion."""
        path = kind.paths[self._paths[kind.name]]
        stream = self.client.watch(
            path, resource=kind.name, resource_version=resource_version, timeout=self.watch_timeout
        )
        self._streams[kind.name] = stream
        try:
            for event in stream:
                if self._stop.is_set():
                    break
                resource_version = self._apply(kind, event) or resource_version
        finally:
            stream.close()
        return resource_version

    def _apply(self, kind: _Kind, event: Json) -> str | None:
        obj, event_type = event.get("object") or {}, event.get("type")
        if event_type == "ERROR":
            gone = obj.get("code") == HTTPStatus.GONE
            cls, label = (Expired, "expired") if gone else (KubeUnavailable, "watch error")
            raise cls(f"{label}: watch {kind.name}: {obj.get('message', obj)}")
        if event_type in ("ADDED", "MODIFIED", "DELETED"):
            new = kind.parse(obj)
            with self._cond:
                key = object_key(new)
                old = self._stores[kind.name].get(key)
                self._replace_one(
                    kind.name, key, old=old, new=None if event_type == "DELETED" else new
                )
        return cast("str | None", metadata_of(obj).get("resourceVersion"))

    def _replace(self, kind: str, fresh: dict[str, KubeObject]) -> None:
        """Swap in a complete list atomically, reporting only real differences."""
        with self._cond:
            old = self._stores[kind]
            changes = [
                Change(kind, key, old.get(key), fresh.get(key))
                for key in sorted(old.keys() | fresh.keys())
                if old.get(key) != fresh.get(key)
            ]
            self._stores[kind] = fresh
            self._emit(kind, changes)
            self._set_listed(kind, True)

    def _replace_one(
        self, kind: str, key: str, *, old: KubeObject | None, new: KubeObject | None
    ) -> None:
        """Store ``new`` (None deletes) under ``key``, reporting it only when it differs."""
        if old == new:
            return
        store = self._stores[kind]
        if new is None:
            store.pop(key, None)
        else:
            store[key] = new
        self._emit(kind, [Change(kind, key, old, new)])

    def _set_listed(self, kind: str, listed: bool) -> None:
        with self._cond:
            if self._listed[kind] != listed:
                self._listed[kind] = listed
                self._version += 1
                self._cond.notify_all()

    def _emit(self, kind: str, changes: list[Change]) -> None:
        if not changes:
            return
        self._version += 1
        for change in changes:
            try:
                if self.on_change is not None:
                    self.on_change(change)
            except Exception:  # a consumer bug must not kill the watch
                log.exception("kube cache on_change failed for %s %s", kind, change.key)
        self._cond.notify_all()


def _merged(current: Mapping[str, str], patch: Mapping[str, str | None]) -> dict[str, str]:
    """``current`` after a merge patch: None removes a key."""
    kept = {k: v for k, v in current.items() if k not in patch}
    return kept | {k: v for k, v in patch.items() if v is not None}


def _temporary(exc: Exception) -> bool:
    """Our errors say so themselves; anything else is a bug, retried as before."""
    return not isinstance(exc, SerfBridgeError) or exc.temporary
