"""The Kubernetes adapter: the only module that imports `kubernetes`.

Role: load the client configuration and send requests (list, watch, merge-patch Node
labels/annotations, create Events: `KubeClient`), handing back plain data parsed by
`kube_json.py`. Callers: the bridge's applier, the watched cache (`kube_cache.py`, built
on this module), the CLI, tests and the bench.

It hands out plain frozen dataclasses (`NodeInfo`, `ServiceInfo`, `SliceInfo`), never
`kubernetes` types, and it translates every API, urllib3 and socket error into
`serfbridge.errors` (404 KubeNotFound, 409 KubeConflict, 403 KubeForbidden naming the
verb and resource, 410 Expired, 5xx/connection KubeUnavailable) with the cause chained.

It must not decide anything: no planning, no diffing (a patch is sent as given), no
retries of writes, and no knowledge of the cache. Requests go through the `kubernetes`
ApiClient (auth, TLS, in-cluster token refresh) as raw JSON, which also avoids the model
(de)serialization skew between client 37 and older apiservers.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from http import HTTPStatus
from typing import Any, cast

import urllib3
import yaml
from kubernetes import client as k8s_client
from kubernetes import config as _k8s_config
from kubernetes.client.exceptions import ApiException

from serfbridge import config
from serfbridge.errors import (
    ConfigError,
    Expired,
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubeUnavailable,
)
from serfbridge.kube_json import (  # re-exported: callers parse through the adapter
    COMPONENT,
    DISCOVERY,
    Json,
    event_body,
    metadata_of,
    object_key,
    parse_endpoint_slice,
    parse_node,
    parse_service,
)
from serfbridge.kubemodels import NodeInfo, ServiceInfo, SliceInfo

__all__ = [
    "COMPONENT",
    "DISCOVERY",
    "MERGE_PATCH",
    "Expired",
    "Json",
    "KubeClient",
    "NodeInfo",
    "ServiceInfo",
    "SliceInfo",
    "WatchStream",
    "load_client",
    "metadata_of",
    "object_key",
    "parse_endpoint_slice",
    "parse_node",
    "parse_service",
]

log = logging.getLogger(__name__)
k8s_config: Any = _k8s_config  # its loaders are untyped
MERGE_PATCH = "application/merge-patch+json"


# --- configuration and requests ----------------------------------------------------------


def load_client(
    kubeconfig: str | None = None, *, env: Mapping[str, str] | None = None
) -> KubeClient:
    """Explicit kubeconfig, else $KUBECONFIG, else in-cluster (in a pod), else ~/.kube/config."""
    env = os.environ if env is None else env
    path = kubeconfig or env.get("KUBECONFIG") or None
    in_cluster = path is None and bool(env.get("KUBERNETES_SERVICE_HOST"))
    if not in_cluster:
        config.check_kubeconfig_files(path or os.path.expanduser("~/.kube/config"))
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
        raise ConfigError(
            f"cannot load Kubernetes configuration from {source}: {_loader_error(exc)}"
        ) from exc
    api_client = k8s_client.ApiClient(configuration)
    api_client.user_agent = COMPONENT  # also the field manager the apiserver records
    return KubeClient(api_client)


def _loader_error(exc: Exception) -> str:
    """The loader's complaint in one line, never a quote of the file: YAML errors quote
    the offending line, which may hold a token or a key."""
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        return "not valid YAML" + (f" (line {mark.line + 1})" if mark is not None else "")
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text (byte {exc.start})"
    return " ".join(str(exc).split())[:300]


def _where(verb: str, resource: str, *, namespace: str | None) -> str:
    return f"{verb} {resource}" + (f" in namespace {namespace}" if namespace else "")


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
        if status == 0 or status >= HTTPStatus.INTERNAL_SERVER_ERROR
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
        # Debian 12's client (22.6) leaves its pooled connections open on close, so their
        # sockets outlive the client; clear the pool ourselves, whichever client this is.
        pool = getattr(getattr(self._api, "rest_client", None), "pool_manager", None)
        if pool is not None:
            pool.clear()

    def request(
        self,
        method: str,
        path: str,
        *,
        verb: str,
        resource: str,
        namespace: str | None = None,
        query: Mapping[str, str] | None = None,
        body: Json | None = None,
        content_type: str = "application/json",
    ) -> Json:
        """One request; returns the decoded reply (empty dict for an empty body)."""
        where = _where(verb, resource, namespace=namespace)
        response = self._open(
            method, path, where=where, query=query, body=body, content_type=content_type
        )
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
        query = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout),
        }
        where = _where("watch", resource, namespace=None)
        response = self._open("GET", path, where=where, query=query, read_timeout=timeout + 15.0)
        return WatchStream(response, where)

    def _open(
        self,
        method: str,
        path: str,
        *,
        where: str,
        query: Mapping[str, str] | None = None,
        body: Json | None = None,
        content_type: str = "application/json",
        read_timeout: float | None = None,
    ) -> Any:
        with self._lock:
            self._counts[" ".join(where.split()[:2])] += 1
        headers = {"Accept": "application/json", "Content-Type": content_type}
        timeout = (10.0, read_timeout or self.timeout)
        try:
            return self._send(
                method, path, query=query, headers=headers, body=body, timeout=timeout
            )
        except ApiException as exc:
            raise translate(exc, where) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise KubeUnavailable(f"unavailable: {where}: {exc}") from exc

    def _send(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None,
        headers: dict[str, str],
        body: Json | None,
        timeout: tuple[float, float],
    ) -> Any:
        """The unread urllib3 response of one request; ApiException for a non-2xx status."""
        query_params = list((query or {}).items())
        if not hasattr(self._api, "param_serialize"):
            # The older generated client (Debian 12's python3-kubernetes 22.6): call_api
            # serializes itself and, not preloading, returns the urllib3 response; its REST
            # layer raises ApiException for a non-2xx status.
            return self._api.call_api(
                path,
                method,
                query_params=query_params,
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=timeout,
            )
        prepared = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query_params,
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        reply = self._api.call_api(*prepared, _request_timeout=timeout)
        if not HTTPStatus.OK <= reply.status < HTTPStatus.MULTIPLE_CHOICES:  # not 2xx
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

    def patch_node(
        self,
        name: str,
        *,
        labels: Mapping[str, str | None] | None = None,
        annotations: Mapping[str, str | None] | None = None,
    ) -> None:
        """Send exactly this merge patch (None removes a key); an empty one is not sent.

        No read and no diff: the planner's patch already holds only keys that differ.
        """
        sections = (("labels", labels), ("annotations", annotations))
        metadata = {section: dict(keys) for section, keys in sections if keys}
        if not metadata:
            return
        self.request(
            "PATCH",
            f"/api/v1/nodes/{name}",
            verb="patch",
            resource="nodes",
            body={"metadata": metadata},
            content_type=MERGE_PATCH,
        )

    def create_event(
        self, involved: NodeInfo | ServiceInfo, *, reason: str, message: str, type: str = "Warning"
    ) -> None:
        """A core/v1 Event on a Service (its namespace) or a Node (namespace default)."""
        namespace = "default" if isinstance(involved, NodeInfo) else involved.namespace
        body = event_body(
            involved, reason=reason, message=message, type=type, instance=os.uname().nodename
        )
        self.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/events",
            verb="create",
            resource="events",
            namespace=namespace,
            body=body,
        )


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
