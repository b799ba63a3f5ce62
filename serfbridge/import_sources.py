"""Serf members' Cloudy entries -> the sources to import into Kubernetes (the read side).

Role: the first step of ``plan_imports``. Every member's ``services`` tag is decoded with
the bounded Cloudy decoder; a tag that does not decode is counted (``decode``), never
raised. Entries whose type does not match ``import_type`` and our own cluster's entries
are left out silently (nothing loops back); an entry whose IP is not usable (not an IP
literal; loopback, link-local, multicast, unspecified; outside every ``import_cidr`` when
some are set) or whose port is not 1-65535 is counted (``ip``, ``port``). A member's
status sets readiness: alive is ready, failed and leaving are listed not ready, a member
that left is not listed at all.

Pure: data in, data out. Must not: do I/O, log, or decide names or writes.
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from serfbridge import cloudy
from serfbridge.cloudy import Entry
from serfbridge.errors import SerfBridgeError
from serfbridge.plan_settings import PlanSettings
from serfbridge.rpc.models import Member

_READY = {"alive": True, "failed": False, "leaving": False}
_PORT = re.compile(r"[0-9]{1,5}")
MAX_PORT = 65535
CLOUDY_TYPE = "cloudy-type"
K8S_SERVICE = "k8s-service"


@dataclass(frozen=True, order=True)
class Source:
    """What one imported Service stands for: a Cloudy type, or another cluster's Service."""

    kind: str  # CLOUDY_TYPE | K8S_SERVICE
    id: str  # the type, or "<cluster>/<ns>/<svc>"
    type: str  # the Cloudy type of its entries (the first seen, for the annotation)

    @property
    def base_name(self) -> str:
        """The text its Service name is derived from (``import_names.dns1035``)."""
        return self.id if self.kind == CLOUDY_TYPE else self.id.replace("/", "-")


@dataclass(frozen=True, order=True)
class Publisher:
    """One member's entry at one IP and port: an endpoint of a source's Service."""

    ip: str
    port: int
    member: str
    ready: bool
    host: str = ""  # m
    description: str = ""  # d
    microcloud: str = ""  # e

    @property
    def ipv6(self) -> bool:
        return ":" in self.ip


@dataclass(frozen=True)
class Sources:
    publishers: dict[Source, tuple[Publisher, ...]]
    skipped: dict[str, int]


def read_sources(members: Sequence[Member], settings: PlanSettings) -> Sources:
    """Every source with its publishers, and what was skipped, counted by reason."""
    found: dict[tuple[str, str], tuple[Source, set[Publisher]]] = {}
    skipped: Counter[str] = Counter()
    wanted = re.compile(settings.import_type)
    networks = _networks(settings.import_cidr)
    for member in sorted(members, key=lambda m: m.name):
        if member.status not in _READY:
            continue
        for entry in _entries(member, skipped):
            if not wanted.fullmatch(entry.type) or cloudy.is_owned_by(entry, settings.cluster):
                continue
            reason = maybe_unusable(entry, networks)
            if reason is not None:
                skipped[reason] += 1
                continue
            source = source_of(entry)
            _, pubs = found.setdefault((source.kind, source.id), (source, set()))
            pubs.add(_publisher(entry, member))
    publishers = {src: tuple(sorted(pubs)) for src, pubs in found.values()}
    return Sources(publishers, dict(skipped))


def _entries(member: Member, skipped: Counter[str]) -> tuple[Entry, ...]:
    value = member.tags.get(cloudy.SERVICES_TAG)
    if value is None:
        return ()
    try:
        return cloudy.decode_services_report(value).entries
    except SerfBridgeError:  # hostile or broken gossip is data: counted, never raised
        skipped["decode"] += 1
        return ()


def source_of(entry: Entry) -> Source:
    """The Service an entry belongs to: its type, or another cluster's Service."""
    owner = cloudy.maybe_owner(entry)
    if owner is not None:
        cluster, namespace, service, _ = owner
        return Source(K8S_SERVICE, f"{cluster}/{namespace}/{service}", entry.type)
    return Source(CLOUDY_TYPE, entry.type, entry.type)


def maybe_unusable(
    entry: Entry, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> str | None:
    """``ip`` or ``port`` when the entry cannot be an endpoint, else None."""
    try:
        ip = ipaddress.ip_address(entry.ip)
    except ValueError:
        return "ip"
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return "ip"
    if networks and not any(ip in net for net in networks if net.version == ip.version):
        return "ip"
    if not _PORT.fullmatch(entry.port) or not 1 <= int(entry.port) <= MAX_PORT:
        return "port"
    return None


def _networks(cidrs: Sequence[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c, strict=False) for c in cidrs]


def _publisher(entry: Entry, member: Member) -> Publisher:
    return Publisher(
        ip=str(ipaddress.ip_address(entry.ip)),
        port=int(entry.port),
        member=member.name,
        ready=_READY[member.status],
        host=entry.host,
        description=entry.description,
        microcloud=entry.microcloud,
    )
