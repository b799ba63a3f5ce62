"""The Kubernetes adapter: the only module that imports `kubernetes`.

Role: load the client configuration, keep a watched cache of Nodes, Services and
EndpointSlices (`KubeCache`), patch Node labels/annotations and create Events
(`KubeClient`). Callers: the daemon, `sync`, the CLI, tests and the bench.

It hands out plain frozen dataclasses (`NodeInfo`, `ServiceInfo`, `SliceInfo`), never
`kubernetes` types, and it translates every API, urllib3 and socket error into
`serfbridge.errors` (404 KubeNotFound, 409 KubeConflict, 403 KubeForbidden naming the
verb and resource, 5xx/connection KubeUnavailable) with the cause chained.

It must not decide anything: no planning, no retries of writes. Requests go through the
`kubernetes` ApiClient (auth, TLS, in-cluster token refresh) as raw JSON, which also
avoids the model (de)serialization skew between client 37 and older apiservers.
The cache is threads (one list+watch loop per kind); an outage or a relist never empties
it, so no consumer is ever told "everything was deleted" (DESIGN "Never act on a partial
view"): consumers must check `synced` before removing anything.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as _k8s_config
from kubernetes.client.exceptions import ApiException

from serfbridge.errors import (
    ConfigError,
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubeUnavailable,
)
from serfbridge.kubemodels import (
    KubeObject,
    NodeInfo,
    ServiceInfo,
    ServicePort,
    SliceEndpoint,
    SliceInfo,
)

log = logging.getLogger(__name__)
k8s_config: Any = _k8s_config  # its loaders are untyped
Json = dict[str, Any]
COMPONENT = "serfbridge"
MERGE_PATCH = "application/merge-patch+json"
DISCOVERY = "discovery.k8s.io"


# --- plain data handed to the rest of the package ----------------------------------------


@dataclass(frozen=True)
class Change:
    """One real change in the cache: ``old`` None = added, ``new`` None = deleted."""

    kind: str
    key: str
    old: KubeObject | None
    new: KubeObject | None


def _meta(obj: Json) -> Json:
    return cast(Json, obj.get("metadata") or {})


def parse_node(obj: Json) -> NodeInfo:
    meta, status = _meta(obj), obj.get("status") or {}
    conditions = status.get("conditions") or ()
    return NodeInfo(
        name=meta["name"], uid=meta.get("uid", ""),
        labels=dict(meta.get("labels") or {}), annotations=dict(meta.get("annotations") or {}),
        addresses=tuple((a.get("type", ""), a.get("address", ""))
                        for a in status.get("addresses") or ()),
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        unschedulable=bool((obj.get("spec") or {}).get("unschedulable")),
        resource_version=meta.get("resourceVersion", ""),
    )  # fmt: skip


def parse_service(obj: Json) -> ServiceInfo:
    meta, spec = _meta(obj), obj.get("spec") or {}
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
    return ServiceInfo(
        namespace=meta["namespace"], name=meta["name"], uid=meta.get("uid", ""),
        type=spec.get("type", "ClusterIP"),
        ports=tuple(ServicePort(p.get("name", ""), p["port"], p.get("nodePort"),
                                p.get("protocol", "TCP")) for p in spec.get("ports") or ()),
        external_traffic_policy=spec.get("externalTrafficPolicy"),
        labels=dict(meta.get("labels") or {}), annotations=dict(meta.get("annotations") or {}),
        load_balancer_ips=tuple(i.get("ip") or i.get("hostname", "") for i in ingress),
        resource_version=meta.get("resourceVersion", ""),
    )  # fmt: skip


def parse_endpoint_slice(obj: Json) -> SliceInfo:
    meta = _meta(obj)
    endpoints = tuple(
        SliceEndpoint(
            addresses=tuple(e.get("addresses") or ()),
            # v1beta1 on 1.20 drops nodeName (alpha gate); topology carries the hostname.
            node_name=e.get("nodeName") or (e.get("topology") or {}).get("kubernetes.io/hostname"),
            ready=(e.get("conditions") or {}).get("ready") is not False,
        )
        for e in obj.get("endpoints") or ()
    )
    return SliceInfo(
        namespace=meta["namespace"], name=meta["name"],
        service_name=(meta.get("labels") or {}).get("kubernetes.io/service-name"),
        endpoints=endpoints,
        ports=tuple((p.get("name", ""), p.get("port", 0), p.get("protocol", "TCP"))
                    for p in obj.get("ports") or ()),
        resource_version=meta.get("resourceVersion", ""),
    )  # fmt: skip


def object_key(obj: KubeObject) -> str:
    """``name`` for Nodes, ``namespace/name`` for namespaced objects."""
    return obj.name if isinstance(obj, NodeInfo) else f"{obj.namespace}/{obj.name}"


# --- configuration and requests ----------------------------------------------------------


def load_client(
    kubeconfig: str | None = None, *, env: Mapping[str, str] | None = None
) -> KubeClient:
    """Explicit kubeconfig, else $KUBECONFIG, else in-cluster (in a pod), else ~/.kube/config."""
    env = os.environ if env is None else env
    path = kubeconfig or env.get("KUBECONFIG") or None
    in_cluster = path is None and bool(env.get("KUBERNETES_SERVICE_HOST"))
    configuration = k8s_client.Configuration()
    try:
        if in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(
                config_file=path, client_configuration=configuration, persist_config=False
            )
    except Exception as exc:  # the loaders raise ConfigException, yaml, OSError, KeyError...
        source = "in-cluster account" if in_cluster else f"kubeconfig {path or '~/.kube/config'}"
        raise ConfigError(f"cannot load Kubernetes configuration from {source}: {exc}") from exc
    api_client = k8s_client.ApiClient(configuration)
    api_client.user_agent = COMPONENT  # also the field manager the apiserver records
    return KubeClient(api_client)


def _where(verb: str, resource: str, namespace: str | None) -> str:
    return f"{verb} {resource}" + (f" in namespace {namespace}" if namespace else "")


class Expired(KubeError):
    """410 Gone: the resourceVersion is too old (compacted); relist."""

    temporary = True


_STATUS_ERRORS: dict[int, tuple[type[KubeError], str]] = {
    403: (KubeForbidden, "forbidden"),
    404: (KubeNotFound, "not found"),
    409: (KubeConflict, "conflict"),
    410: (Expired, "expired"),
    429: (KubeUnavailable, "throttled"),
}


def translate(exc: ApiException, where: str) -> KubeError:
    """Map an ApiException to our tree; ``where`` is e.g. "patch services in namespace x"."""
    status = exc.status or 0  # 0: TLS failure inside the client
    fallback = (
        (KubeUnavailable, "unavailable")
        if status == 0 or status >= 500
        else (KubeError, f"HTTP {status}")
    )
    cls, label = _STATUS_ERRORS.get(status, fallback)
    return cls(f"{label}: {where}: {_status_message(exc)}")


def _status_message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


class KubeClient:
    """JSON requests through the `kubernetes` ApiClient, counted by verb, errors translated."""

    def __init__(self, api_client: Any, *, timeout: float = 30.0) -> None:
        self._api = api_client
        self.timeout = timeout
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def request_counts(self) -> dict[str, int]:
        """Requests sent so far, keyed "verb resource" (e.g. "patch nodes", "list services")."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        self._api.close()

    def request(
        self, method: str, path: str, *, verb: str, resource: str, namespace: str | None = None,
        query: Mapping[str, str] | None = None, body: Json | None = None,
        content_type: str = "application/json",
    ) -> Json:  # fmt: skip
        """One request; returns the decoded reply (empty dict for an empty body)."""
        where = _where(verb, resource, namespace)
        response = self._open(method, path, where, query=query, body=body,
                              content_type=content_type)  # fmt: skip
        try:
            data = response.data
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailable(f"{where}: {exc}") from exc
        finally:
            response.release_conn()
        return cast(Json, json.loads(data)) if data else {}

    def watch(
        self, path: str, *, resource: str, resource_version: str, timeout: int
    ) -> WatchStream:
        """Open a watch from ``resource_version`` (bookmarks on); the server ends it after
        ``timeout`` seconds."""
        query = {"watch": "true", "resourceVersion": resource_version,
                 "allowWatchBookmarks": "true", "timeoutSeconds": str(timeout)}  # fmt: skip
        where = _where("watch", resource, None)
        response = self._open("GET", path, where, query=query, read_timeout=timeout + 15.0)
        return WatchStream(response, where)

    def _open(
        self, method: str, path: str, where: str, *, query: Mapping[str, str] | None = None,
        body: Json | None = None, content_type: str = "application/json",
        read_timeout: float | None = None,
    ) -> Any:  # fmt: skip
        with self._lock:
            self._counts[" ".join(where.split()[:2])] += 1
        headers = {"Accept": "application/json", "Content-Type": content_type}
        timeout = (10.0, read_timeout or self.timeout)
        try:
            prepared = self._api.param_serialize(
                method=method, resource_path=path, query_params=list((query or {}).items()),
                header_params=headers, body=body, auth_settings=["BearerToken"],
            )  # fmt: skip
            reply = self._api.call_api(*prepared, _request_timeout=timeout)
            if not 200 <= reply.status <= 299:
                reply.read()
                raise ApiException(http_resp=reply)
        except ApiException as exc:
            raise translate(exc, where) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailable(f"unavailable: {where}: {exc}") from exc
        return reply.response

    # --- the operations the bridge uses ----------------------------------------------

    def list_nodes(self) -> dict[str, NodeInfo]:
        """All Nodes, by name: one LIST (the standalone event handler has no cache)."""
        reply = self.request("GET", "/api/v1/nodes", verb="list", resource="nodes")
        return {n.name: n for n in map(parse_node, reply.get("items") or ())}

    def get_node(self, name: str) -> NodeInfo:
        reply = self.request("GET", f"/api/v1/nodes/{name}", verb="get", resource="nodes")
        return parse_node(reply)

    def patch_node_metadata(
        self, name: str, *, labels: Mapping[str, str | None] | None = None,
        annotations: Mapping[str, str | None] | None = None, cache: KubeCache | None = None,
    ) -> bool:  # fmt: skip
        """Merge-patch only the keys that differ (None removes); False when nothing was sent.

        The current values come from ``cache`` when it is synced, else from a GET.
        """
        node = cache.maybe_node(name) if cache is not None and cache.synced else None
        node = node or self.get_node(name)
        metadata = {
            section: delta
            for section, current, wanted in (("labels", node.labels, labels),
                                             ("annotations", node.annotations, annotations))
            if (delta := metadata_delta(current, wanted or {}))
        }  # fmt: skip
        if not metadata:
            return False
        self.request("PATCH", f"/api/v1/nodes/{name}", verb="patch", resource="nodes",
                     body={"metadata": metadata}, content_type=MERGE_PATCH)  # fmt: skip
        return True

    def create_event(
        self, involved: NodeInfo | ServiceInfo, *, reason: str, message: str, type: str = "Warning"
    ) -> None:
        """A core/v1 Event on a Service (its namespace) or a Node (namespace default)."""
        namespace = "default" if isinstance(involved, NodeInfo) else involved.namespace
        body = event_body(involved, reason=reason, message=message, type=type)
        self.request("POST", f"/api/v1/namespaces/{namespace}/events", verb="create",
                     resource="events", namespace=namespace, body=body)  # fmt: skip


def metadata_delta(
    current: Mapping[str, str], wanted: Mapping[str, str | None]
) -> dict[str, str | None]:
    """The merge-patch entries that would change ``current``: set values, None to remove."""
    return {
        key: value
        for key, value in wanted.items()
        if (key in current if value is None else current.get(key) != value)
    }


def event_body(involved: NodeInfo | ServiceInfo, *, reason: str, message: str, type: str) -> Json:
    """A core/v1 Event reported by serfbridge about ``involved``."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{involved.name}."}, "involvedObject": _object_ref(involved),
        "reason": reason, "message": message, "type": type, "count": 1,
        "firstTimestamp": now, "lastTimestamp": now,
        "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
        "reportingInstance": os.uname().nodename,
    }  # fmt: skip


def _object_ref(obj: NodeInfo | ServiceInfo) -> Json:
    if isinstance(obj, NodeInfo):
        return {"apiVersion": "v1", "kind": "Node", "name": obj.name, "uid": obj.uid}
    return {"apiVersion": "v1", "kind": "Service", "namespace": obj.namespace,
            "name": obj.name, "uid": obj.uid}  # fmt: skip


class WatchStream:
    """An open watch: iterate for decoded events; ``shutdown()`` unblocks a reader."""

    def __init__(self, response: Any, where: str) -> None:
        self._response = response
        self._where = where

    def __iter__(self) -> Iterator[Json]:
        try:
            yield from (json.loads(line) for line in _lines(self._response))
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            raise KubeUnavailable(f"unavailable: {self._where}: {exc}") from exc

    def shutdown(self) -> None:
        with contextlib.suppress(OSError, ValueError, RuntimeError):  # closed or released
            self._response.shutdown()

    def close(self) -> None:
        self._response.close()


def _lines(response: Any) -> Iterator[bytes]:
    """Split a chunked watch stream into JSON lines as they arrive."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=False):
        pending += chunk
        *complete, pending = pending.split(b"\n")
        yield from (line for line in complete if line.strip())
    if pending.strip():
        yield pending


# --- the watched cache -------------------------------------------------------------------

T = TypeVar("T", NodeInfo, ServiceInfo, SliceInfo)


@dataclass(frozen=True)
class _Kind:
    name: str
    paths: tuple[str, ...]  # preferred first; a 404 on list moves to the next
    parse: Callable[[Json], KubeObject]


KINDS = (
    _Kind("nodes", ("/api/v1/nodes",), parse_node),
    _Kind("services", ("/api/v1/services",), parse_service),
    _Kind("endpointslices", (f"/apis/{DISCOVERY}/v1/endpointslices",
                             f"/apis/{DISCOVERY}/v1beta1/endpointslices"), parse_endpoint_slice),
)  # fmt: skip


class KubeCache:
    """List+watch of Nodes, Services and EndpointSlices, one thread per kind.

    ``synced`` is true only while every kind has completed a list and its watch has not
    failed since. ``on_change`` runs on a watcher thread with the cache locked (keep it
    short); ``version``/``wait_for_change`` and per-kind ``generation`` serve pollers.
    """

    def __init__(
        self, client: KubeClient, *, on_change: Callable[[Change], None] | None = None,
        watch_timeout: int = 300, max_backoff: float = 8.0,
    ) -> None:  # fmt: skip
        self.client = client
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.max_backoff = max_backoff
        self._cond = threading.Condition(threading.RLock())
        self._stores: dict[str, dict[str, KubeObject]] = {k.name: {} for k in KINDS}
        self._listed = dict.fromkeys(self._stores, False)
        self._generations = dict.fromkeys(self._stores, 0)
        self._paths = {k.name: 0 for k in KINDS}
        self._version = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: dict[str, WatchStream] = {}

    # --- lifecycle ------------------------------------------------------------------

    def start(self) -> KubeCache:
        for kind in KINDS:
            thread = threading.Thread(target=self._run, args=(kind,), daemon=True,
                                      name=f"kube-watch-{kind.name}")  # fmt: skip
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

    def generation(self, kind: str) -> int:
        with self._cond:
            return self._generations[kind]

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

    def maybe_node(self, name: str) -> NodeInfo | None:
        return self.nodes().get(name)

    def maybe_service(self, namespace: str, name: str) -> ServiceInfo | None:
        return self.services().get(f"{namespace}/{name}")

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
                delay = min(self.max_backoff, 0.25 * 2**failures) * random.uniform(0.75, 1.0)
                if not self._stop.is_set():
                    log.warning("kube %s: %s; relisting in %.1fs", kind.name, exc, delay)
                self._stop.wait(delay)

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
        return str(_meta(reply).get("resourceVersion", ""))

    def _watch(self, kind: _Kind, resource_version: str) -> str:
        """Follow one watch until the server ends it; returns the last resourceVersion."""
        path = kind.paths[self._paths[kind.name]]
        stream = self.client.watch(path, resource=kind.name, resource_version=resource_version,
                                   timeout=self.watch_timeout)  # fmt: skip
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
            gone = obj.get("code") == 410
            cls, label = (Expired, "expired") if gone else (KubeUnavailable, "watch error")
            raise cls(f"{label}: watch {kind.name}: {obj.get('message', obj)}")
        if event_type in ("ADDED", "MODIFIED", "DELETED"):
            new = kind.parse(obj)
            with self._cond:
                store = self._stores[kind.name]
                old = store.get(key := object_key(new))
                if event_type == "DELETED":
                    store.pop(key, None)
                    self._emit(kind.name, [Change(kind.name, key, old, None)] if old else [])
                elif old != new:
                    store[key] = new
                    self._emit(kind.name, [Change(kind.name, key, old, new)])
        return cast("str | None", _meta(obj).get("resourceVersion"))

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

    def _set_listed(self, kind: str, listed: bool) -> None:
        with self._cond:
            if self._listed[kind] != listed:
                self._listed[kind] = listed
                self._version += 1
                self._cond.notify_all()

    def _emit(self, kind: str, changes: list[Change]) -> None:
        if not changes:
            return
        self._generations[kind] += 1
        self._version += 1
        for change in changes:
            try:
                if self.on_change is not None:
                    self.on_change(change)
            except Exception:  # a consumer bug must not kill the watch
                log.exception("kube cache on_change failed for %s %s", kind, change.key)
        self._cond.notify_all()
