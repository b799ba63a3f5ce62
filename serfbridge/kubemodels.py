"""Plain data for Kubernetes objects, shared by the adapter and the pure planners.

``kube.py`` (the only module that imports ``kubernetes``) builds these from API JSON;
``plan_labels.py``, ``plan_publish.py`` and the daemon read them. Keeping them here lets
the planners and the event handler stay free of the ``kubernetes`` import, which costs
most of a second on a small machine.

Pure data: no I/O, no imports beyond the standard library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeInfo:
    name: str
    uid: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    addresses: tuple[tuple[str, str], ...]  # (type, address), e.g. ("InternalIP", "10.0.0.1")
    ready: bool
    unschedulable: bool = False
    resource_version: str = field(default="", compare=False)


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    node_port: int | None
    protocol: str
    target_port: int | str | None = None


@dataclass(frozen=True)
class ServiceInfo:
    namespace: str
    name: str
    uid: str
    type: str
    ports: tuple[ServicePort, ...]
    external_traffic_policy: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    load_balancer_ips: tuple[str, ...]
    resource_version: str = field(default="", compare=False)
    cluster_ip: str = field(default="", compare=False)  # immutable: a replace carries it


@dataclass(frozen=True)
class SliceEndpoint:
    addresses: tuple[str, ...]
    node_name: str | None
    ready: bool  # an unset condition counts as ready, as the API says


@dataclass(frozen=True)
class SliceInfo:
    namespace: str
    name: str
    service_name: str | None
    endpoints: tuple[SliceEndpoint, ...]
    ports: tuple[tuple[str, int, str], ...]  # (name, port, protocol)
    resource_version: str = field(default="", compare=False)
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    address_type: str = "IPv4"


KubeObject = NodeInfo | ServiceInfo | SliceInfo
