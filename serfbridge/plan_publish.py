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

Pure: data in, a plan out. No I/O, no logging.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from serfbridge import cloudy, rendezvous
from serfbridge.cloudy import Entry, TagChange
from serfbridge.errors import ConfigError, SerfBridgeError, ServicesDecodeError
from serfbridge.kubemodels import NodeInfo, ServiceInfo, SliceInfo
from serfbridge.plan_labels import K8S_TAG, LabelSettings, match_members
from serfbridge.rpc.budget import DEFAULT_TAG_LIMIT, encoded_tags_size, merged_tags
from serfbridge.rpc.models import Member

ELIGIBLE_TYPES = ("NodePort", "LoadBalancer")
#: Tags a Node's ``P/set-tags`` may never set: they are ours or Cloudy's.
RESERVED_TAGS = (cloudy.SERVICES_TAG, K8S_TAG)


@dataclass(frozen=True)
class PublishSettings:
    self_node: str
    cluster: str = "default"
    prefix: str = "serfbridge.io"
    self_member: str | None = None
    namespaces: frozenset[str] = frozenset()  # empty = all
    exclude_namespaces: frozenset[str] = frozenset()
    selector: str = ""  # label selector: k=v, k!=v, k, !k (comma-separated)
    publish_default: bool = True
    replicas: int = 2
    cloud_name: str = "guifi"
    tag_limit: int = DEFAULT_TAG_LIMIT

    def __post_init__(self) -> None:
        parse_selector(self.selector)
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be at least 1, got {self.replicas}")

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"


@dataclass(frozen=True)
class LeftOut:
    """A Service port this node should publish but does not, and why."""

    namespace: str
    service: str
    port: str
    reason: str


@dataclass(frozen=True)
class Candidate:
    """One entry this node is placed to publish, with its ordering keys."""

    entry: Entry
    namespace: str
    service: str
    port: str
    priority: int


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


# --- selection ----------------------------------------------------------------------------


_SELECTOR_TERM = re.compile(r"\s*(!?)([A-Za-z0-9./_-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9._-]*))?\s*")


def parse_selector(selector: str) -> list[tuple[str, str, str]]:
    """``k=v,k!=v,k,!k`` -> [(op, key, value)]; ConfigError for anything else."""
    terms = []
    for raw in filter(None, (t.strip() for t in selector.split(","))):
        match = _SELECTOR_TERM.fullmatch(raw)
        if match is None or (match[1] and match[3]):
            raise ConfigError(f"unsupported label selector term {raw!r} (use k=v, k!=v, k, !k)")
        bang, key, op, value = match.groups()
        terms.append(
            ("!" if bang else (op.replace("==", "=") if op else "exists"), key, value or "")
        )
    return terms


def selector_matches(labels: Mapping[str, str], selector: str) -> bool:
    for op, key, value in parse_selector(selector):
        if (op == "=" and labels.get(key) != value) or (op == "!=" and labels.get(key) == value):
            return False
        if (op == "exists" and key not in labels) or (op == "!" and key in labels):
            return False
    return True


def maybe_skip_reason(svc: ServiceInfo, settings: PublishSettings) -> str | None:
    """Why ``svc`` is not published at all, or None when it is eligible."""
    if svc.type not in ELIGIBLE_TYPES:
        return f"type {svc.type} is never published"
    if settings.namespaces and svc.namespace not in settings.namespaces:
        return "namespace not allowed"
    if svc.namespace in settings.exclude_namespaces:
        return "namespace excluded"
    if not selector_matches(svc.labels, settings.selector):
        return "label selector does not match"
    opt = svc.annotations.get(settings.key("publish"), "").strip().lower()
    if opt not in ("", "true", "false"):
        return f"{settings.key('publish')} must be true or false, got {opt!r}"
    if not (opt == "true" or (opt == "" and settings.publish_default)):
        return "not opted in"
    if not svc.ports:
        return "no ports"
    return None


def _int_annotation(svc: ServiceInfo, key: str, default: int, problems: list[str]) -> int:
    raw = svc.annotations.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        problems.append(f"{svc.namespace}/{svc.name}: {key} must be an integer, got {raw!r}")
        return default


# --- placement ----------------------------------------------------------------------------


def eligible_nodes(
    nodes: Mapping[str, NodeInfo], members: Sequence[Member], settings: PublishSettings
) -> list[str]:
    """Ready Nodes whose matched member of this cluster is alive."""
    label_settings = LabelSettings(
        self_node=settings.self_node,
        cluster=settings.cluster,
        prefix=settings.prefix,
        self_member=settings.self_member,
    )
    matched = match_members(members, nodes, label_settings)
    return sorted(n for n, m in matched.items() if m.status == "alive" and nodes[n].ready)


def local_endpoint_nodes(svc: ServiceInfo, slices: Mapping[str, SliceInfo]) -> set[str]:
    return {
        ep.node_name for s in slices.values()
        if s.namespace == svc.namespace and s.service_name == svc.name
        for ep in s.endpoints if ep.ready and ep.node_name
    }  # fmt: skip


def candidates_for_self(
    services: Mapping[str, ServiceInfo],
    slices: Mapping[str, SliceInfo],
    nodes: Sequence[str],
    *,
    self_ip: str,
    settings: PublishSettings,
) -> tuple[list[Candidate], list[LeftOut], list[str]]:
    """The entries placed on this node, plus what was skipped and annotation problems."""
    chosen: list[Candidate] = []
    left: list[LeftOut] = []
    problems: list[str] = []
    for svc in sorted(services.values(), key=lambda s: (s.namespace, s.name)):
        reason = maybe_skip_reason(svc, settings)
        if reason is not None:
            if svc.type in ELIGIBLE_TYPES and reason == "no ports":
                left.append(LeftOut(svc.namespace, svc.name, "", reason))
            continue
        pool = nodes
        if svc.external_traffic_policy == "Local":
            local = local_endpoint_nodes(svc, slices)
            pool = [n for n in nodes if n in local]
        replicas = _int_annotation(svc, settings.key("replicas"), settings.replicas, problems)
        priority = _int_annotation(svc, settings.key("priority"), 0, problems)
        for cand in _service_entries(
            svc, self_ip=self_ip, settings=settings, left=left, priority=priority
        ):
            key = f"{settings.cluster}/{svc.namespace}/{svc.name}/{cand.port}"
            if settings.self_node in rendezvous.pick(key, pool, max(1, replicas)):
                chosen.append(cand)
    return chosen, left, problems


def _service_entries(
    svc: ServiceInfo, *, self_ip: str, settings: PublishSettings, left: list[LeftOut], priority: int
) -> list[Candidate]:
    result = []
    seen: set[tuple[str, str]] = set()
    lb_ip = svc.load_balancer_ips[0] if svc.type == "LoadBalancer" and svc.load_balancer_ips else ""
    for port in svc.ports:
        published = port.port if lb_ip else port.node_port
        if not published:
            left.append(LeftOut(svc.namespace, svc.name, str(port.port), "no node port"))
            continue
        description = svc.annotations.get(settings.key("description")) or (
            svc.name if len(svc.ports) == 1 else f"{svc.name}_{port.name or port.port}"
        )
        try:
            entry = cloudy.make_entry(
                description=description,
                type=svc.annotations.get(settings.key("type"), "kubernetes"),
                port=published,
                host=f"{settings.self_node}.{settings.cloud_name}.local",
                ip=lb_ip or self_ip,
                microcloud=settings.cluster,
                txt=cloudy.owner_txt(
                    cluster=settings.cluster,
                    namespace=svc.namespace,
                    service=svc.name,
                    port=port.port,
                ),
            )
        except SerfBridgeError as exc:
            left.append(LeftOut(svc.namespace, svc.name, str(port.port), f"invalid: {exc}"))
            continue
        if entry.key in seen:  # e.g. the same port over TCP and UDP: one Cloudy entry
            continue
        seen.add(entry.key)
        result.append(Candidate(entry, svc.namespace, svc.name, str(port.port), priority))
    return result


# --- the agent's tag set ------------------------------------------------------------------


def desired_base_tags(
    current: Mapping[str, str], node: NodeInfo | None, settings: PublishSettings
) -> tuple[dict[str, str], tuple[str, ...], list[str]]:
    """Current tags with ``k8s`` and the Node's ``P/set-tags`` applied (services untouched).

    Returns the tags, the keys now owned through ``P/set-tags``, and problems.
    """
    problems: list[str] = []
    wanted: dict[str, str] = {}
    annotations = node.annotations if node is not None else {}
    raw = annotations.get(settings.key("set-tags"))
    if raw:
        try:
            parsed = json.loads(raw)
            if not isinstance(parsed, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
            ):
                raise ValueError("not a JSON object of strings")
            wanted = {k: v for k, v in parsed.items() if k not in RESERVED_TAGS}
            problems += [
                f"{settings.key('set-tags')}: {k!r} is reserved"
                for k in parsed
                if k in RESERVED_TAGS
            ]
        except ValueError as exc:
            problems.append(f"{settings.key('set-tags')} ignored: {exc}")
            wanted = {}
    previously = {k for k in annotations.get(settings.key("owned-tags"), "").split(",") if k}
    stale = [k for k in previously - set(wanted) if k not in RESERVED_TAGS]
    tags = merged_tags(
        current,
        set_tags={**wanted, K8S_TAG: f"{settings.cluster}/{settings.self_node}"},
        delete=stale,
    )
    return tags, tuple(sorted(wanted)), problems


def fit_budget(
    base: Mapping[str, str], foreign: Sequence[Entry], ours: Sequence[Candidate], limit: int
) -> tuple[list[Entry], list[LeftOut]]:
    """Our entries that fit next to the foreign ones, best priority first, then by name."""
    kept: list[Entry] = []
    left: list[LeftOut] = []
    for cand in sorted(ours, key=lambda c: (-c.priority, c.namespace, c.service, c.port)):
        trial = [*foreign, *kept, cand.entry]
        if encoded_tags_size({**base, cloudy.SERVICES_TAG: cloudy.encode_services(trial)}) <= limit:
            kept.append(cand.entry)
        else:
            left.append(
                LeftOut(
                    cand.namespace,
                    cand.service,
                    cand.port,
                    f"budget exceeded: this node's tags are limited to {limit} bytes",
                )
            )
    return kept, left


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
        settings,
    )
    self_ip = next((m.addr for m in members if m.name == settings.self_member), "")
    ours, left, ann_problems = candidates_for_self(
        services,
        slices,
        eligible_nodes(nodes, members, settings),
        self_ip=self_ip,
        settings=settings,
    )
    if not allow_removal:
        planned = {c.entry.key for c in ours}
        ours += [
            Candidate(e, "", "", e.port, 1 << 30)
            for e in current_list
            if cloudy.is_owned_by(e, settings.cluster) and e.key not in planned
        ]
    kept, over = fit_budget(base, foreign, ours, settings.tag_limit)
    final = [*foreign, *kept]
    services_change = _services_tag_change(current_tags, base, final, settings.tag_limit)
    change = _combine(current_tags, base, services_change)
    after = merged_tags(current_tags, set_tags=change.set_tags, delete=change.delete)
    return PublishPlan(
        tuple(kept),
        tuple(left + over),
        change,
        after,
        owned_tags,
        tuple(problems + tag_problems + ann_problems),
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
    current: Mapping[str, str], base: Mapping[str, str], final: Sequence[Entry], limit: int
) -> TagChange:
    probe = {**base}
    if cloudy.SERVICES_TAG in current:
        probe[cloudy.SERVICES_TAG] = current[cloudy.SERVICES_TAG]
    return cloudy.plan_services_tag(probe, final, limit=limit)


def _combine(current: Mapping[str, str], base: Mapping[str, str], services: TagChange) -> TagChange:
    set_tags = {k: v for k, v in base.items() if current.get(k) != v}
    set_tags.update(services.set_tags)
    delete = tuple(
        sorted(
            {k for k in current if k not in base and k != cloudy.SERVICES_TAG}
            | set(services.delete)
        )
    )
    return TagChange(set_tags=set_tags, delete=delete)
