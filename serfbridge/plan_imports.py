"""Serf members' Cloudy entries + what the API holds -> the import writes (third direction).

The one brain of the imports direction: the daemon's ``ImportRunner``, ``sync`` and
``sync --prune-imports`` call ``plan_imports`` / ``plan_prune`` (through ``bridge``) and
hand the writes to the one applier. Rules (issue 15, ``docs``):

* sources (``import_sources``): every member's ``services`` entries of a matching type,
  never our own cluster's; unusable IPs and ports are skipped and counted;
* objects, all in ``import_namespace``: one selectorless ClusterIP Service per Cloudy type
  and per other cluster's Service, named by ``import_names.dns1035``; one EndpointSlice
  per (Service, port, address family) holding the publishers' IPs, ready while the member
  is alive; the marker label ``P/imported-by: <cluster>`` says which objects are ours;
* a Service of a wanted name without our marker is never touched: refused and reported;
  two sources with one name: the first by sorted source key gets it, the other is refused;
* one writer: the alive bridge of this cluster ranked first by rendezvous hash over a
  fixed key among those that recorded themselves on their Node (as ``plan_labels``' writers),
  and only while it sees a majority (as ``plan_labels``' partition guard);
* never on a partial view: an unsynced Kubernetes view or unread members plan no writes;
* compare before every write: equal objects are not written (steady state: none).

Pure: data in, a plan out (writes are data). No I/O, no logging, no clock. Must not
import ``config``, ``plan_labels`` or ``plan_publish``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

from serfbridge import matching, rendezvous
from serfbridge.import_names import MAX_NAME, dns1035
from serfbridge.import_sources import K8S_SERVICE, Publisher, Source, Sources, read_sources
from serfbridge.kube_json import DISCOVERY, Json, parse_endpoint_slice, parse_service
from serfbridge.kubemodels import NodeInfo, ServiceInfo, SliceInfo
from serfbridge.plan_settings import PlanSettings
from serfbridge.rpc.models import Member

#: The fixed rendezvous key that elects the one import writer.
WRITER_KEY = "serfbridge/imports"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
T = TypeVar("T", ServiceInfo, SliceInfo)


@dataclass(frozen=True)
class ImportWrite:
    """One request: ``create``, ``replace`` (PUT with ``resource_version``) or ``delete``."""

    verb: str
    kind: str  # "Service" | "EndpointSlice"
    namespace: str
    name: str
    body: Json | None = field(default=None, repr=False)
    resource_version: str = ""

    def describe(self) -> str:
        """``create Service cloudy/syncthing``: how ``--dry-run`` and the log show it."""
        return f"{self.verb} {self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class ImportPlan:
    writes: tuple[ImportWrite, ...] = ()
    skipped: Mapping[str, int] = field(default_factory=dict)  # reason -> entries (or members)
    refused: tuple[str, ...] = ()  # wanted Service names we do not own
    notes: tuple[str, ...] = ()
    writer: str | None = None  # the node whose bridge writes imports
    counts: Mapping[str, int] = field(default_factory=dict)  # services, endpoint_slices


@dataclass(frozen=True)
class Desired:
    """The objects that should exist in the import namespace, by name, as request bodies."""

    services: dict[str, Json]
    slices: dict[str, Json]
    refused: tuple[str, ...]
    notes: tuple[str, ...]


# --- the plan ------------------------------------------------------------------------------


def plan_imports(
    members: Sequence[Member],
    *,
    nodes: Mapping[str, NodeInfo],
    services: Mapping[str, ServiceInfo],
    slices: Mapping[str, SliceInfo],
    settings: PlanSettings,
    synced: bool,
    slice_version: str = "v1",
) -> ImportPlan:
    """The import writes this bridge (``settings.self_node``) makes, and what it skipped.

    ``synced`` False (the Kubernetes view may be incomplete) or no ``members`` (they were
    not read): nothing at all is written, not even a create.
    """
    sources = read_sources(members, settings)
    desired = desired_objects(sources, services, settings=settings, slice_version=slice_version)
    writer, guard = maybe_writer(members, nodes, settings=settings)
    counts = {"services": len(desired.services), "endpoint_slices": len(desired.slices)}
    base = ImportPlan((), sources.skipped, desired.refused, desired.notes, writer, counts)
    hold = _maybe_no_writes(writer, guard, settings=settings, ready=synced and bool(members))
    if hold is not None:
        return _with_note(base, hold)
    return replace(base, writes=diff_writes(desired, services, slices=slices, settings=settings))


def plan_prune(
    services: Mapping[str, ServiceInfo], slices: Mapping[str, SliceInfo], *, settings: PlanSettings
) -> ImportPlan:
    """Delete everything this cluster imported (its marker), in every namespace."""
    writes = [_delete("EndpointSlice", s) for _, s in sorted(slices.items()) if _ours(s, settings)]
    writes += [_delete("Service", s) for _, s in sorted(services.items()) if _ours(s, settings)]
    return ImportPlan(tuple(writes), writer=settings.self_node)


def _with_note(plan: ImportPlan, note: str) -> ImportPlan:
    return replace(plan, notes=(*plan.notes, note))


def _maybe_no_writes(
    writer: str | None, guard: str | None, *, settings: PlanSettings, ready: bool
) -> str | None:
    """Why this bridge writes no imports this pass, or None when it is the writer."""
    if not ready:
        return "kubernetes view not synced or members not read: no import writes"
    if guard is not None:
        return guard
    if writer != settings.self_node:
        return f"imports are written by {writer or 'no bridge'}"
    return None


# --- the one writer ------------------------------------------------------------------------


def maybe_writer(
    members: Sequence[Member], nodes: Mapping[str, NodeInfo], *, settings: PlanSettings
) -> tuple[str | None, str | None]:
    """(the writer's node, None), or (None, why nobody writes: the partition guard)."""
    bindings = matching.match_for(members, nodes, settings=settings).bindings
    alive = [n for n, b in bindings.items() if b.member.status == "alive"]
    # A member that left said goodbye: it is no sign of a partition, so it does not count.
    present = [n for n, b in bindings.items() if b.member.status != "left"]
    if bindings and 2 * len(alive) <= len(present):
        guard = (
            f"partition guard: {len(alive)}/{len(present)} Nodes alive; "
            "this bridge is not in a majority and writes no imports"
        )
        return None, guard
    bridges = [
        n
        for n in alive
        if matching.may_write_for_others(n, bindings[n], nodes=nodes, settings=settings)
    ]
    ranked = rendezvous.rank(WRITER_KEY, bridges)
    return (ranked[0] if ranked else None), None


# --- what should exist ---------------------------------------------------------------------


def desired_objects(
    sources: Sources,
    services: Mapping[str, ServiceInfo],
    *,
    settings: PlanSettings,
    slice_version: str,
) -> Desired:
    """Bodies of the Services and slices to have; names we may not take are refused."""
    named, refused, notes = name_sources(sources.publishers)
    taken = _existing(services, settings.import_namespace)
    desired = Desired({}, {}, (), ())
    for name, source in sorted(named.items()):
        current = taken.get(name)
        if current is not None and not _ours(current, settings):
            refused.append(name)
            notes.append(f"Service {settings.import_namespace}/{name} is not ours: not touched")
            continue
        pubs = sources.publishers[source]
        desired.services[name] = service_body(name, source, pubs=pubs, settings=settings)
        desired.slices.update(slice_bodies(name, pubs, settings=settings, version=slice_version))
    return Desired(desired.services, desired.slices, tuple(sorted(set(refused))), tuple(notes))


def name_sources(
    publishers: Mapping[Source, Sequence[Publisher]],
) -> tuple[dict[str, Source], list[str], list[str]]:
    """Service name -> its source; the first by sorted source key wins a shared name."""
    named: dict[str, Source] = {}
    refused: list[str] = []
    notes: list[str] = []
    for source in sorted(publishers):
        name = dns1035(source.base_name)
        if name in named:
            refused.append(name)
            notes.append(f"{source.kind} {source.id!r} also maps to {name}: not imported")
            continue
        named[name] = source
    return named, refused, notes


def service_body(
    name: str, source: Source, *, pubs: Sequence[Publisher], settings: PlanSettings
) -> Json:
    """A selectorless ClusterIP Service with one TCP port per distinct published port."""
    annotations = {settings.key("cloudy-type"): _clean(source.type)}
    if source.kind == K8S_SERVICE:
        annotations[settings.key("source")] = _clean(source.id)
    ports = sorted({p.port for p in pubs})
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": settings.import_namespace,
            "labels": {
                settings.key("imported-by"): settings.cluster,
                settings.key("import-source"): source.kind,
            },
            "annotations": annotations,
        },
        "spec": {
            "type": "ClusterIP",
            "ports": [
                {"name": f"p{p}", "port": p, "targetPort": p, "protocol": "TCP"} for p in ports
            ],
        },
    }


def slice_bodies(
    service: str, pubs: Sequence[Publisher], *, settings: PlanSettings, version: str
) -> dict[str, Json]:
    """One EndpointSlice per (port, address family) of a Service, by name."""
    groups: dict[tuple[int, bool], list[Publisher]] = {}
    for pub in pubs:
        groups.setdefault((pub.port, pub.ipv6), []).append(pub)
    bodies = {}
    for (port, ipv6), group in sorted(groups.items()):
        name = dns1035(f"{service}-p{port}") + ("-v6" if ipv6 else "")
        bodies[name] = _slice_body(
            name, service, group=group, settings=settings, port=port, version=version
        )
    return bodies


def _slice_body(
    name: str,
    service: str,
    *,
    group: Sequence[Publisher],
    settings: PlanSettings,
    port: int,
    version: str,
) -> Json:
    ready: dict[str, bool] = {}
    for pub in group:
        ready[pub.ip] = ready.get(pub.ip, False) or pub.ready
    return {
        "apiVersion": f"{DISCOVERY}/{version}",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": settings.import_namespace,
            "labels": {
                SERVICE_NAME_LABEL: service,
                MANAGED_BY_LABEL: managed_by(settings),
                settings.key("imported-by"): settings.cluster,
            },
            "annotations": {settings.key("sources"): _sources_json(group)},
        },
        "addressType": "IPv6" if group[0].ipv6 else "IPv4",
        "ports": [{"name": f"p{port}", "port": port, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [ip], "conditions": {"ready": ready[ip]}} for ip in sorted(ready)
        ],
    }


def managed_by(settings: PlanSettings) -> str:
    """Our ``endpointslice.kubernetes.io/managed-by`` value: the label prefix, as upstream's
    controller writes ``endpointslice-controller.k8s.io``. ``<prefix>/serfbridge`` is no
    valid label value (the API refuses a '/'), and one is at most 63 characters."""
    return settings.prefix if len(settings.prefix) <= MAX_NAME else dns1035(settings.prefix)


def _sources_json(group: Sequence[Publisher]) -> str:
    rows = sorted(
        {(p.ip, p.member, p.host, p.description, p.microcloud) for p in group},
    )
    listed = [dict(zip(("ip", "member", "m", "d", "e"), row, strict=True)) for row in rows]
    return json.dumps(listed, separators=(",", ":"))  # ASCII: gossip may hold surrogates


def _clean(text: str) -> str:
    """Gossip strings may hold undecodable bytes (surrogates); the API needs valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# --- compare before every write ------------------------------------------------------------


def diff_writes(
    desired: Desired,
    services: Mapping[str, ServiceInfo],
    *,
    slices: Mapping[str, SliceInfo],
    settings: PlanSettings,
) -> tuple[ImportWrite, ...]:
    """Creates and replaces for what differs, deletes of ours no longer wanted."""
    have_svcs = _existing(services, settings.import_namespace)
    have_slices = _existing(slices, settings.import_namespace)
    writes = [
        w
        for name, body in sorted(desired.services.items())
        if (w := _maybe_service_write(body, have_svcs.get(name))) is not None
    ]
    for name, body in sorted(desired.slices.items()):
        current = have_slices.get(name)
        if current is not None and not _ours(current, settings):
            continue  # someone else's slice of that name: never touched
        write = _maybe_slice_write(body, current)
        writes += [write] if write is not None else []
    writes += [
        _delete("EndpointSlice", s)
        for n, s in sorted(have_slices.items())
        if _ours(s, settings) and n not in desired.slices
    ]
    writes += [
        _delete("Service", s)
        for n, s in sorted(have_svcs.items())
        if _ours(s, settings) and n not in desired.services
    ]
    return tuple(writes)


def _maybe_service_write(body: Json, current: ServiceInfo | None) -> ImportWrite | None:
    if current is None:
        return _write("create", "Service", body=body)
    if service_shape(parse_service(body)) == service_shape(current):
        return None
    replaced = {**body, "metadata": {**body["metadata"]}, "spec": {**body["spec"]}}
    replaced["metadata"]["resourceVersion"] = current.resource_version
    if current.cluster_ip:  # immutable: a PUT must carry it
        replaced["spec"]["clusterIP"] = current.cluster_ip
    return _write("replace", "Service", body=replaced, resource_version=current.resource_version)


def _maybe_slice_write(body: Json, current: SliceInfo | None) -> ImportWrite | None:
    if current is None:
        return _write("create", "EndpointSlice", body=body)
    if parse_endpoint_slice(body) == current:
        return None
    replaced = {**body, "metadata": {**body["metadata"]}}
    replaced["metadata"]["resourceVersion"] = current.resource_version
    return _write(
        "replace", "EndpointSlice", body=replaced, resource_version=current.resource_version
    )


def service_shape(svc: ServiceInfo) -> tuple[object, ...]:
    """What of a Service we own is compared: labels, annotations, type, ports."""
    ports = tuple((p.name, p.port, p.protocol, p.target_port) for p in svc.ports)
    return (dict(svc.labels), dict(svc.annotations), svc.type, ports)


def _write(verb: str, kind: str, *, body: Json, resource_version: str = "") -> ImportWrite:
    meta = body["metadata"]
    return ImportWrite(verb, kind, meta["namespace"], meta["name"], body, resource_version)


def _delete(kind: str, obj: ServiceInfo | SliceInfo) -> ImportWrite:
    return ImportWrite("delete", kind, obj.namespace, obj.name, None, obj.resource_version)


def _existing(objects: Mapping[str, T], namespace: str) -> dict[str, T]:
    return {o.name: o for o in objects.values() if o.namespace == namespace}


def _ours(obj: ServiceInfo | SliceInfo, settings: PlanSettings) -> bool:
    return obj.labels.get(settings.key("imported-by")) == settings.cluster
