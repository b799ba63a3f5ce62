"""The Kubernetes adapter: the only module that imports `kubernetes`.

Role: load the client configuration, send requests (list, watch, patch Node
labels/annotations, create Events: `KubeClient`) and turn API JSON into plain data. The
watched cache built on it lives in `kube_cache.py`. Callers: the daemon, `sync`, the CLI,
tests and the bench.

It hands out plain frozen dataclasses (`NodeInfo`, `ServiceInfo`, `SliceInfo`), never
`kubernetes` types, and it translates every API, urllib3 and socket error into
`serfbridge.errors` (404 KubeNotFound, 409 KubeConflict, 403 KubeForbidden naming the
verb and resource, 5xx/connection KubeUnavailable) with the cause chained.

It must not decide anything: no planning, no retries of writes. Requests go through the
`kubernetes` ApiClient (auth, TLS, in-cluster token refresh) as raw JSON, which also
avoids the model (de)serialization skew between client 37 and older apiservers.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

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

if TYPE_CHECKING:
    from serfbridge.kube_cache import KubeCache

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


def metadata_of(obj: Json) -> Json:
    return cast(Json, obj.get("metadata") or {})


def parse_node(obj: Json) -> NodeInfo:
    meta, status = metadata_of(obj), obj.get("status") or {}
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
    meta, spec = metadata_of(obj), obj.get("spec") or {}
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
    meta = metadata_of(obj)
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
            return self._send(method, path, query, headers, body, timeout)
        except ApiException as exc:
            raise translate(exc, where) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailable(f"unavailable: {where}: {exc}") from exc

    def _send(
        self, method: str, path: str, query: Mapping[str, str] | None, headers: dict[str, str],
        body: Json | None, timeout: tuple[float, float],
    ) -> Any:  # fmt: skip
        """The unread urllib3 response of one request; ApiException for a non-2xx status."""
        query_params = list((query or {}).items())
        if not hasattr(self._api, "param_serialize"):
            # The older generated client (Debian 12's python3-kubernetes 22.6): call_api
            # serializes itself and, not preloading, returns the urllib3 response; its REST
            # layer raises ApiException for a non-2xx status.
            return self._api.call_api(
                path, method, query_params=query_params, header_params=headers, body=body,
                auth_settings=["BearerToken"], _preload_content=False,
                _return_http_data_only=True, _request_timeout=timeout,
            )  # fmt: skip
        prepared = self._api.param_serialize(
            method=method, resource_path=path, query_params=query_params,
            header_params=headers, body=body, auth_settings=["BearerToken"],
        )  # fmt: skip
        reply = self._api.call_api(*prepared, _request_timeout=timeout)
        if not 200 <= reply.status <= 299:
            reply.read()
            raise ApiException(http_resp=reply)
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
        with contextlib.suppress(OSError, ValueError, RuntimeError, AttributeError):  # closed
            if hasattr(self._response, "shutdown"):  # urllib3 >= 2.3
                self._response.shutdown()
            else:  # urllib3 1.26 (Debian 12): shut down the socket under the response
                self._response._connection.sock.shutdown(socket.SHUT_RDWR)

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
