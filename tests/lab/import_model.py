"""The spec of issue 15's objects as a model: what the import namespace should hold.

Role: the expectation every import test compares the apiserver with. ``expected_objects``
takes the members and their Cloudy entries (as ``tests.lab.imports.gossip`` reads them, or
as a test says it published them) and returns the Services and EndpointSlices the spec
derives, as plain dicts shaped like ``tests.lab.imports.imported_objects``. ``dns1035``
is the spec's name rule, ``writer_node`` its one-writer rule.

Written from the spec (``imports-spec.md``, issue 15) alone. Must not: import the product's
import planner or its name function (the model is the check on them), import pytest, or
do I/O.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from serfbridge import cloudy, rendezvous

P = "serfbridge.io"
#: The rendezvous key that picks the one import writer (spec: "One writer").
WRITER_KEY = "serfbridge/imports"
SERVICE_NAME = "kubernetes.io/service-name"
MANAGED_BY = "endpointslice.kubernetes.io/managed-by"
#: The spec's ``managed-by: <P>/serfbridge`` is not a valid label value (no "/" allowed:
#: the apiserver answers 422), so the value is checked as "valid and names serfbridge";
#: both the model and ``imported_objects`` show such a value as this placeholder.
MANAGED_BY_VALID = "<a valid label value naming serfbridge>"

#: {"services": {name: view}, "slices": {name: view}}
Objects = dict[str, dict[str, dict[str, Any]]]


# --- names ---------------------------------------------------------------------------------


def dns1035(x: str) -> str:
    """The spec's derived name: a valid DNS-1035 label, ``x`` itself when it already is one."""
    name = re.sub("-+", "-", re.sub("[^a-z0-9]", "-", x.lower())).strip("-")
    if not name[:1].isalpha():
        name = "x-" + name
    if name != x or len(name) > 63:
        name = name[:54] + "-" + hashlib.sha256(x.encode()).hexdigest()[:8]
    return name


def writer_node(nodes: Iterable[str]) -> str:
    """The node whose daemon writes imports while all ``nodes`` are alive and bridged."""
    return rendezvous.rank(WRITER_KEY, nodes)[0]


# --- members and entries ------------------------------------------------------------------


def entry(
    type: str, port: str | int, ip: str, *, member: str, description: str = "", txt: str = ""
) -> cloudy.Entry:
    """One avahi-ps entry as a Cloudy node publishes it (host ``<member>.guifi.local``)."""
    return cloudy.Entry(
        type=type,
        description=description or f"{type}_on_{member}",
        host=f"{member}.guifi.local",
        ip=ip,
        port=str(port),
        microcloud="guifi",
        txt=txt,
    )


@dataclass(frozen=True)
class Gossiped:
    """One member as an agent's ``members`` shows it."""

    status: str
    entries: tuple[cloudy.Entry, ...] = ()
    undecodable: bool = False


# --- the model -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportSettings:
    """What the daemons were told (the spec's defaults otherwise)."""

    cluster: str = "lab"
    prefix: str = P
    type_regex: str = ".*"
    cidrs: tuple[str, ...] = ()


#: The spec's defaults (cluster ``lab`` as the lab's daemons run).
DEFAULTS = ImportSettings()


@dataclass
class Expected:
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    slices: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, int] = field(default_factory=dict)

    def objects(self) -> Objects:
        return {"services": self.services, "slices": self.slices}


@dataclass
class _Source:
    labels: dict[str, str]
    annotations: dict[str, str]
    #: port -> ip -> (ready, sources row)
    ports: dict[int, dict[str, tuple[bool, dict[str, str]]]] = field(default_factory=dict)


def expected_objects(
    members: Mapping[str, Gossiped], settings: ImportSettings | None = None
) -> Expected:
    """The Services and EndpointSlices the spec derives from ``members`` (no collisions)."""
    settings = settings or DEFAULTS
    out = Expected()
    sources: dict[str, _Source] = {}
    for name in sorted(members):
        member = members[name]
        if member.undecodable:
            out.skipped["decode"] = out.skipped.get("decode", 0) + 1
        if member.status not in ("alive", "failed", "leaving"):
            continue
        for e in member.entries:
            _add_entry(sources, out, name, member.status, e, settings)
    for svc, source in sorted(sources.items()):
        out.services[svc] = _service_view(source, settings)
        for port, ips in sorted(source.ports.items()):
            out.slices[dns1035(f"{svc}-p{port}")] = _slice_view(svc, port, ips, settings)
    return out


def _add_entry(
    sources: dict[str, _Source],
    out: Expected,
    member: str,
    status: str,
    e: cloudy.Entry,
    s: ImportSettings,
) -> None:
    if not re.fullmatch(s.type_regex, e.type) or cloudy.is_owned_by(e, s.cluster):
        return
    reason = _maybe_unusable(e, s)
    if reason:
        out.skipped[reason] = out.skipped.get(reason, 0) + 1
        return
    svc, source = _source_for(e, s)
    row = {"ip": e.ip, "member": member, "m": e.host, "d": e.description, "e": e.microcloud}
    source = sources.setdefault(svc, source)
    ips = source.ports.setdefault(int(e.port), {})
    was_ready, first_row = ips.get(e.ip, (False, row))  # one endpoint per distinct IP
    ips[e.ip] = (was_ready or status == "alive", first_row)


def _maybe_unusable(e: cloudy.Entry, s: ImportSettings) -> str:
    try:
        ip = ipaddress.ip_address(e.ip)
    except ValueError:
        return "ip"
    if ip.version != 4:
        raise AssertionError("the model covers IPv4 only (the -v6 name is not needed here)")
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return "ip"
    if s.cidrs and not any(ip in ipaddress.ip_network(c) for c in s.cidrs):
        return "ip"
    if not (e.port.isascii() and e.port.isdigit() and 1 <= int(e.port) <= 65535):
        return "port"
    return ""


def _source_for(e: cloudy.Entry, s: ImportSettings) -> tuple[str, _Source]:
    owner = cloudy.maybe_owner(e)
    labels = {f"{s.prefix}/imported-by": s.cluster}
    annotations = {f"{s.prefix}/cloudy-type": e.type}
    if owner is None:
        labels[f"{s.prefix}/import-source"] = "cloudy-type"
        return dns1035(e.type), _Source(labels, annotations)
    other, ns, svc, _ = owner
    labels[f"{s.prefix}/import-source"] = "k8s-service"
    annotations[f"{s.prefix}/source"] = f"{other}/{ns}/{svc}"
    return dns1035(f"{other}-{ns}-{svc}"), _Source(labels, annotations)


def _service_view(source: _Source, s: ImportSettings) -> dict[str, Any]:
    ports = [
        {"name": f"p{port}", "port": port, "targetPort": port, "protocol": "TCP"}
        for port in sorted(source.ports)
    ]
    return {
        "labels": source.labels,
        "annotations": source.annotations,
        "type": "ClusterIP",
        "selector": {},
        "ports": ports,
    }


def _slice_view(
    svc: str, port: int, ips: Mapping[str, tuple[bool, dict[str, str]]], s: ImportSettings
) -> dict[str, Any]:
    order = sorted(ips)
    return {
        "labels": {
            SERVICE_NAME: svc,
            MANAGED_BY: MANAGED_BY_VALID,
            f"{s.prefix}/imported-by": s.cluster,
        },
        "addressType": "IPv4",
        "ports": [{"name": f"p{port}", "port": port, "protocol": "TCP"}],
        "endpoints": [[[ip], ips[ip][0]] for ip in order],
        "sources": [ips[ip][1] for ip in order],
    }
