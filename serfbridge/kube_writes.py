"""Create, replace and delete namespaced Services and EndpointSlices: the imports' requests.

Role: the request side of the imports direction, next to ``kube.py`` (which it uses: every
request goes through ``KubeClient.request``, so errors are translated and counted there,
and ``kubernetes`` stays imported by ``kube.py`` alone). EndpointSlices are sent to the
``discovery.k8s.io`` version the server serves (``KubeCache.slice_version`` says which its
list found: ``v1``, or ``v1beta1`` on a 1.20 server). Callers: ``bridge.apply_import_plan``
and tests.

Must not: decide anything (the planner's bodies are sent as given), read before writing,
or retry: a 409 is the caller's to skip, and the next pass plans again from fresh data.
"""

from __future__ import annotations

from serfbridge.kube import KubeClient
from serfbridge.kube_json import DISCOVERY, Json, parse_endpoint_slice, parse_service
from serfbridge.kubemodels import ServiceInfo, SliceInfo

#: kind -> (API group path, resource); the slices' version is the server's.
_RESOURCES = {"Service": ("/api/v1", "services"), "EndpointSlice": ("", "endpointslices")}


def object_path(kind: str, namespace: str, *, slice_version: str, name: str = "") -> str:
    """``/api/v1/namespaces/<ns>/services[/<name>]`` and the slices' equivalent."""
    group, resource = _RESOURCES[kind]
    group = group or f"/apis/{DISCOVERY}/{slice_version}"
    tail = f"/{name}" if name else ""
    return f"{group}/namespaces/{namespace}/{resource}{tail}"


class KubeObjects:
    """The namespaced writes of the imports direction, through one ``KubeClient``."""

    def __init__(self, client: KubeClient, *, slice_version: str = "v1") -> None:
        self.client = client
        self.slice_version = slice_version

    def create(self, kind: str, *, namespace: str, body: Json) -> ServiceInfo | SliceInfo:
        """POST ``body``; returns the object as the server stored it."""
        path = object_path(kind, namespace, slice_version=self.slice_version)
        reply = self._send("POST", path, kind=kind, verb="create", namespace=namespace, body=body)
        return _parsed(kind, reply)

    def replace(
        self, kind: str, *, namespace: str, name: str, body: Json
    ) -> ServiceInfo | SliceInfo:
        """PUT ``body`` (it carries the resourceVersion it replaces: 409 when stale)."""
        path = object_path(kind, namespace, slice_version=self.slice_version, name=name)
        reply = self._send("PUT", path, kind=kind, verb="update", namespace=namespace, body=body)
        return _parsed(kind, reply)

    def delete(self, kind: str, *, namespace: str, name: str, resource_version: str = "") -> None:
        """DELETE, only if the object is still at ``resource_version`` when one is given."""
        path = object_path(kind, namespace, slice_version=self.slice_version, name=name)
        body: Json = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        self._send("DELETE", path, kind=kind, verb="delete", namespace=namespace, body=body)

    def _send(
        self, method: str, path: str, *, kind: str, verb: str, namespace: str, body: Json
    ) -> Json:
        resource = _RESOURCES[kind][1]
        return self.client.request(
            method, path, verb=verb, resource=resource, namespace=namespace, body=body
        )


def _parsed(kind: str, reply: Json) -> ServiceInfo | SliceInfo:
    return parse_service(reply) if kind == "Service" else parse_endpoint_slice(reply)
