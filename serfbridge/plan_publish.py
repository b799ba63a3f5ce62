"""Services + Nodes + members -> the tag set this node's agent should carry (to-serf).

The one brain of the publish direction; the daemon and ``sync --dry-run`` call
``plan_publish`` and apply the returned ``TagChange`` in one place. Rules (DESIGN.md):

* eligible: NodePort and LoadBalancer Services that pass the namespace, label-selector
  and opt-in/opt-out filters; one entry per port, ``p`` the node port (a LoadBalancer with
  an ingress IP is announced at that IP and the service port); no port, no entry;
* placement: each entry is published by ``replicas`` nodes (default 2) chosen by
  rendezvous hashing among eligible nodes (Ready, alive member of this cluster, and for
  ``externalTrafficPolicy: Local`` a ready local endpoint);
* budget: whatever does not fit this node's tag limit after the foreign entries and the
  other tags is left out by priority, then by name; every omission is reported;
* ownership: our entries carry ``t=k8s=<cluster>/<ns>/<svc>/<port>`` and ``e=<cluster>``;
  foreign entries (Cloudy's own, other clusters') are kept untouched, in their order.

The steps, in the order ``plan_publish`` takes them, each in its own module: ``cloudy``
decodes the current ``services`` lists, ``plan_tags`` sets the agent's other tags,
``matching`` gives the eligible nodes' members, ``plan_select`` picks the Services and
reads their annotations, ``cloudy.make_entry`` builds each port's entry, ``placement``
chooses the nodes (``rpc.budget`` says what fits), and ``cloudy.plan_services_tag`` makes
the one ``tags`` request (checked against the budget again, as the agent will count it).

Pure: data in, a plan out. No I/O, no logging, no clock. Must not import ``config`` or
``plan_labels``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from serfbridge import cloudy, matching, placement
from serfbridge.cloudy import Entry, TagChange
from serfbridge.errors import SerfBridgeError, ServicesDecodeError
from serfbridge.kubemodels import NodeInfo, ServiceInfo, ServicePort, SliceInfo
from serfbridge.placement import NodeRoom, Want
from serfbridge.plan_select import (
    ELIGIBLE_TYPES,
    int_annotation,
    local_endpoint_nodes,
    maybe_skip_reason,
)
from serfbridge.plan_settings import PlanSettings
from serfbridge.plan_tags import desired_base_tags
from serfbridge.rpc.budget import encoded_tags_size, merged_tags
from serfbridge.rpc.models import Member

#: The planner's input (``plan_settings``), under the name this module always used.
PublishSettings = PlanSettings


@dataclass(frozen=True)
class LeftOut:
    """A Service port this node should publish but does not, and why."""

    namespace: str
    service: str
    port: str
    reason: str


@dataclass(frozen=True)
class PublishPlan:
    entries: tuple[Entry, ...]  # our owned entries on this node, as they will be published
    left_out: tuple[LeftOut, ...]
    change: TagChange  # the `tags` request that gets the agent there
    tags: Mapping[str, str] = field(default_factory=dict)  # the agent's tags afterwards
    owned_tags: tuple[str, ...] = ()  # keys set from P/set-tags, for P/owned-tags
    problems: tuple[str, ...] = ()

    @property
    def budget_used(self) -> int:
        return encoded_tags_size(self.tags)


# --- placement ----------------------------------------------------------------------------


def eligible_nodes(
    nodes: Mapping[str, NodeInfo], members: Sequence[Member], *, settings: PublishSettings
) -> dict[str, Member]:
    """Ready Nodes whose matched member of this cluster is alive, with that member."""
    matched = matching.match_members(members, nodes, settings=settings)
    return {n: m for n, m in sorted(matched.items()) if m.status == "alive" and nodes[n].ready}


def wanted_ports(
    services: Mapping[str, ServiceInfo],
    slices: Mapping[str, SliceInfo],
    *,
    pool: Mapping[str, Member],
    settings: PublishSettings,
) -> tuple[list[Want], list[LeftOut], list[str]]:
    """Every eligible Service port to place, what cannot be published at all, problems.

    A port that cannot be published is reported by one node only, the first in its
    rendezvous order, so a Service gets one Event, not one per node.
    """
    wants: list[Want] = []
    left: list[LeftOut] = []
    problems: list[str] = []
    for svc in sorted(services.values(), key=lambda s: (s.namespace, s.name)):
        reason = maybe_skip_reason(svc, settings)
        if reason is None:
            wants += _service_wants(
                svc, slices, pool=pool, settings=settings, left=left, problems=problems
            )
        elif svc.type in ELIGIBLE_TYPES and reason == "no ports":
            _maybe_report(left, svc, port="", reason=reason, pool=list(pool), settings=settings)
    return wants, left, problems


def _service_wants(
    svc: ServiceInfo,
    slices: Mapping[str, SliceInfo],
    *,
    pool: Mapping[str, Member],
    settings: PublishSettings,
    left: list[LeftOut],
    problems: list[str],
) -> list[Want]:
    """One eligible Service's ports to place, one ``Want`` per distinct entry key."""
    nodes = list(pool)
    if svc.external_traffic_policy == "Local":
        local = local_endpoint_nodes(svc, slices)
        nodes = [n for n in nodes if n in local]
    replicas = max(
        1,
        int_annotation(svc, settings.key("replicas"), default=settings.replicas, problems=problems),
    )
    priority = int_annotation(svc, settings.key("priority"), default=0, problems=problems)
    wants: list[Want] = []
    seen: set[tuple[str, str]] = set()
    for port in svc.ports:
        template = _template(svc, port, settings=settings, left=left, pool=list(pool))
        if template is None or template.key in seen:  # e.g. one port over TCP and UDP
            continue
        seen.add(template.key)
        wants.append(
            Want(
                key=f"{settings.cluster}/{svc.namespace}/{svc.name}/{port.port}",
                namespace=svc.namespace,
                service=svc.name,
                port=str(port.port),
                priority=priority,
                replicas=replicas,
                pool=tuple(nodes),
                entry_for=_entry_maker(
                    template, pool, settings=settings, fixed_ip=bool(template.ip)
                ),
            )
        )
    return wants


def _template(
    svc: ServiceInfo,
    port: ServicePort,
    *,
    settings: PublishSettings,
    left: list[LeftOut],
    pool: list[str],
) -> Entry | None:
    """The port's entry with this node's host; None (and reported) when it cannot be."""
    lb_ip = svc.load_balancer_ips[0] if svc.type == "LoadBalancer" and svc.load_balancer_ips else ""
    published = port.port if lb_ip else port.node_port
    if not published:
        _maybe_report(
            left, svc, port=str(port.port), reason="no node port", pool=pool, settings=settings
        )
        return None
    description = svc.annotations.get(settings.key("description")) or (
        svc.name if len(svc.ports) == 1 else f"{svc.name}_{port.name or port.port}"
    )
    try:
        return _made_entry(
            description=description,
            type=svc.annotations.get(settings.key("type"), "kubernetes"),
            port=published,
            host=f"{settings.self_node}.{settings.cloud_name}.local",
            ip=lb_ip,
            microcloud=settings.cluster,
            txt=cloudy.owner_txt(
                cluster=settings.cluster, namespace=svc.namespace, service=svc.name, port=port.port
            ),
        )
    except SerfBridgeError as exc:
        _maybe_report(
            left, svc, port=str(port.port), reason=f"invalid: {exc}", pool=pool, settings=settings
        )
        return None


def _entry_maker(
    template: Entry, pool: Mapping[str, Member], *, settings: PublishSettings, fixed_ip: bool
) -> Callable[[str], Entry]:
    def entry_for(node: str) -> Entry:
        # Node names and member addresses are safe values: no need to sanitize again.
        ip = template.ip if fixed_ip else pool[node].addr
        return _entry_at(template, f"{node}.{settings.cloud_name}.local", ip=ip)

    return entry_for


@functools.lru_cache(maxsize=8192)
def _entry_at(template: Entry, host: str, *, ip: str) -> Entry:
    """``template`` as one node shows it, kept by value: placement tries each port on up
    to six nodes every pass, and equal entries let its fit memo recognise the lists."""
    return replace(template, host=host, ip=ip)


@functools.lru_cache(maxsize=8192)
def _made_entry(
    *, description: str, type: str, port: int, host: str, ip: str, microcloud: str, txt: str
) -> Entry:
    """``cloudy.make_entry`` kept by value (it sanitizes every field: the bulk of a pass
    over many unchanged Services). Invalid input raises, and is not kept."""
    return cloudy.make_entry(
        description=description,
        type=type,
        port=port,
        host=host,
        ip=ip,
        microcloud=microcloud,
        txt=txt,
    )


def _maybe_report(
    left: list[LeftOut],
    svc: ServiceInfo,
    *,
    port: str,
    reason: str,
    pool: list[str],
    settings: PublishSettings,
) -> None:
    key = f"{settings.cluster}/{svc.namespace}/{svc.name}/{port}"
    if placement.ranked(key, tuple(pool))[:1] == (settings.self_node,):
        left.append(LeftOut(svc.namespace, svc.name, port, reason))


def node_rooms(
    pool: Mapping[str, Member],
    nodes: Mapping[str, NodeInfo],
    *,
    settings: PublishSettings,
    own: NodeRoom,
) -> dict[str, NodeRoom]:
    """Every eligible node's budget as the gossip shows it; our own from our agent."""
    rooms = {}
    for name, member in pool.items():
        if name == settings.self_node:
            rooms[name] = own
            continue
        try:
            _, foreign, _ = _split_current(member.tags, settings.cluster)
        except ServicesDecodeError:
            rooms[name] = NodeRoom({}, (), writable=False)
            continue
        others = {k: v for k, v in member.tags.items() if k != cloudy.SERVICES_TAG}
        base, _, _ = desired_base_tags(others, nodes.get(name), settings=settings, node_name=name)
        rooms[name] = NodeRoom(base, tuple(foreign))
    return rooms


# --- the plan ------------------------------------------------------------------------------


def plan_publish(
    *,
    services: Mapping[str, ServiceInfo],
    slices: Mapping[str, SliceInfo],
    nodes: Mapping[str, NodeInfo],
    members: Sequence[Member],
    current_tags: Mapping[str, str],
    settings: PublishSettings,
    allow_removal: bool = True,
) -> PublishPlan:
    """This node's owned entries and the ``tags`` request that publishes them.

    With ``allow_removal=False`` (a partial view: cache not synced) nothing already
    published is taken away: our current entries are kept next to the new ones.
    """
    current_list, foreign, problems = _split_current(current_tags, settings.cluster)
    base, owned_tags, tag_problems = desired_base_tags(
        {k: v for k, v in current_tags.items() if k != cloudy.SERVICES_TAG},
        nodes.get(settings.self_node),
        settings=settings,
    )
    pool = eligible_nodes(nodes, members, settings=settings)
    wants, left, ann_problems = wanted_ports(services, slices, pool=pool, settings=settings)
    own = NodeRoom(base, tuple(foreign))
    rooms = node_rooms(pool, nodes, settings=settings, own=own)
    assigned, short = placement.place(wants, rooms, limit=settings.tag_limit)
    ours = assigned.get(settings.self_node, [])
    if not allow_removal:  # a partial view: keep what we publish, after what we plan
        planned = {e.key for e in ours}
        ours = ours + [
            e
            for e in current_list
            if cloudy.is_owned_by(e, settings.cluster) and e.key not in planned
        ]
    kept = placement.fit_in_order(own, ours, limit=settings.tag_limit)
    left += [_shortfall(s, settings.tag_limit) for s in short if s.reporter == settings.self_node]
    final = [*foreign, *kept]
    services_change = _services_tag_change(
        current_tags, base, final=final, limit=settings.tag_limit
    )
    change = _combine(current_tags, base, services=services_change)
    after = merged_tags(current_tags, set_tags=change.set_tags, delete=change.delete)
    return PublishPlan(
        tuple(kept),
        tuple(left),
        change,
        after,
        owned_tags,
        tuple(problems + tag_problems + ann_problems),
    )


def _shortfall(short: placement.Shortfall, limit: int) -> LeftOut:
    want = short.want
    where = f"on {len(short.placed)} of {want.replicas} nodes" if short.placed else "nowhere"
    return LeftOut(
        want.namespace,
        want.service,
        want.port,
        f"budget exceeded: published {where}; every eligible node's tags are "
        f"limited to {limit} bytes",
    )


def _split_current(
    tags: Mapping[str, str], cluster: str
) -> tuple[list[Entry], list[Entry], list[str]]:
    value = tags.get(cloudy.SERVICES_TAG)
    if value is None:
        return [], [], []
    try:
        result = cloudy.decode_services_report(value)
    except SerfBridgeError as exc:
        # Rewriting would destroy Cloudy's own entries; keep the tag as it is.
        raise ServicesDecodeError(
            f"this node's own services tag cannot be decoded ({exc}); not rewriting it, "
            "so Cloudy's entries are not lost"
        ) from exc
    entries = list(result.entries)
    return (
        entries,
        [e for e in entries if not cloudy.is_owned_by(e, cluster)],
        list(result.problems),
    )


def _services_tag_change(
    current: Mapping[str, str], base: Mapping[str, str], *, final: Sequence[Entry], limit: int
) -> TagChange:
    probe = {**base}
    if cloudy.SERVICES_TAG in current:
        probe[cloudy.SERVICES_TAG] = current[cloudy.SERVICES_TAG]
    return cloudy.plan_services_tag(probe, final, limit=limit)


def _combine(
    current: Mapping[str, str], base: Mapping[str, str], *, services: TagChange
) -> TagChange:
    set_tags = {k: v for k, v in base.items() if current.get(k) != v}
    set_tags.update(services.set_tags)
    delete = tuple(
        sorted(
            {k for k in current if k not in base and k != cloudy.SERVICES_TAG}
            | set(services.delete)
        )
    )
    return TagChange(set_tags=set_tags, delete=delete)


def forget_memos() -> None:
    """Drop every memo a pass keeps, so the next one computes from scratch (benchmarks,
    and the tests that compare the incremental path with a fresh one)."""
    placement.forget()
    cloudy.forget_encodings()
    _entry_at.cache_clear()
    _made_entry.cache_clear()
