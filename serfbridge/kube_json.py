"""Kubernetes API JSON <-> the plain data of ``kubemodels``: parsing and request bodies.

Role: turn Node, Service and EndpointSlice JSON into frozen dataclasses, and build the
bodies the adapter sends (Events). Callers: ``kube.py`` (requests) and ``kube_cache.py``
(the watch loop's parsing); tests.

Must not: do I/O or import ``kubernetes`` (``kube.py`` is the only module that does), or
decide anything.
"""

from __future__ import annotations

import datetime
from typing import Any, cast

from serfbridge.kubemodels import (
    KubeObject,
    NodeInfo,
    ServiceInfo,
    ServicePort,
    SliceEndpoint,
    SliceInfo,
)

#: Decoded API JSON: the one place its untyped shape is named.
Json = dict[str, Any]
COMPONENT = "serfbridge"
DISCOVERY = "discovery.k8s.io"


def metadata_of(obj: Json) -> Json:
    return cast(Json, obj.get("metadata") or {})


def parse_node(obj: Json) -> NodeInfo:
    meta, status = metadata_of(obj), obj.get("status") or {}
    conditions = status.get("conditions") or ()
    return NodeInfo(
        name=meta["name"],
        uid=meta.get("uid", ""),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        addresses=tuple(
            (a.get("type", ""), a.get("address", "")) for a in status.get("addresses") or ()
        ),
        ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
        unschedulable=bool((obj.get("spec") or {}).get("unschedulable")),
        resource_version=meta.get("resourceVersion", ""),
    )


def parse_service(obj: Json) -> ServiceInfo:
    meta, spec = metadata_of(obj), obj.get("spec") or {}
    ingress = ((obj.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
    return ServiceInfo(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta.get("uid", ""),
        type=spec.get("type", "ClusterIP"),
        ports=tuple(map(_service_port, spec.get("ports") or ())),
        external_traffic_policy=spec.get("externalTrafficPolicy"),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        load_balancer_ips=tuple(i.get("ip") or i.get("hostname", "") for i in ingress),
        resource_version=meta.get("resourceVersion", ""),
        cluster_ip=spec.get("clusterIP") or "",
    )


def _service_port(port: Json) -> ServicePort:
    return ServicePort(
        port.get("name", ""),
        port["port"],
        port.get("nodePort"),
        port.get("protocol", "TCP"),
        port.get("targetPort"),
    )


def parse_endpoint_slice(obj: Json) -> SliceInfo:
    meta = metadata_of(obj)
    return SliceInfo(
        namespace=meta["namespace"],
        name=meta["name"],
        service_name=(meta.get("labels") or {}).get("kubernetes.io/service-name"),
        endpoints=tuple(map(_slice_endpoint, obj.get("endpoints") or ())),
        ports=tuple(
            (p.get("name", ""), p.get("port", 0), p.get("protocol", "TCP"))
            for p in obj.get("ports") or ()
        ),
        resource_version=meta.get("resourceVersion", ""),
        labels=dict(meta.get("labels") or {}),
        annotations=dict(meta.get("annotations") or {}),
        address_type=obj.get("addressType", "IPv4"),
    )


def _slice_endpoint(endpoint: Json) -> SliceEndpoint:
    topology = endpoint.get("topology") or {}
    return SliceEndpoint(
        addresses=tuple(endpoint.get("addresses") or ()),
        # v1beta1 on 1.20 drops nodeName (alpha gate); topology carries the hostname.
        node_name=endpoint.get("nodeName") or topology.get("kubernetes.io/hostname"),
        ready=(endpoint.get("conditions") or {}).get("ready") is not False,
    )


def object_key(obj: KubeObject) -> str:
    """``name`` for Nodes, ``namespace/name`` for namespaced objects."""
    return obj.name if isinstance(obj, NodeInfo) else f"{obj.namespace}/{obj.name}"


def event_body(
    involved: NodeInfo | ServiceInfo, *, reason: str, message: str, type: str, instance: str
) -> Json:
    """A core/v1 Event reported by serfbridge (on host ``instance``) about ``involved``."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{involved.name}."},
        "involvedObject": _object_ref(involved),
        "reason": reason,
        "message": message,
        "type": type,
        "count": 1,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
    }


def _object_ref(obj: NodeInfo | ServiceInfo) -> Json:
    if isinstance(obj, NodeInfo):
        return {"apiVersion": "v1", "kind": "Node", "name": obj.name, "uid": obj.uid}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "namespace": obj.namespace,
        "name": obj.name,
        "uid": obj.uid,
    }
