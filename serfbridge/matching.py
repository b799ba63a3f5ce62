"""Which Serf member is which Kubernetes Node: the identity rule (DESIGN.md "Identity").

Gossip is only a hint: anyone who joins can gossip ``k8s=<cluster>/<node>`` and any name.
A member speaks for a Node only when the authenticated side vouches for it:

1. **Own agent.** On this bridge's own Node, the member its own agent reports (RPC ``stats``,
   behind the RPC key) is the Node's member, whatever anyone gossips.
2. **Own record.** Each bridge records its own agent's member on its own Node through the
   API: ``P/serf-member`` (name), ``P/serf-addr`` (ip:port) and ``P/serf-recorded-by`` (the
   writer's node name). A record whose writer is the Node itself is trusted by every
   bridge: the member of that name, or else a member at that exact ``ip:port`` (a Cloudy
   agent gets a new name, ``<HostID>-<date +%N>-<hostname>-<IP>:5000``, at every restart).
3. **Address.** A member whose address is one of the Node's addresses in the API, when no
   other Node has that address. This is how Nodes that never had a bridge are matched.

A verified member whose ``k8s`` tag names its Node has a bridge running there (the daemon
sets the tag), so the Node is ``bridged``: its own bridge writes it while it is alive.
A record written by another bridge (the failure writer, or the writer of a Node with no
bridge) is not trusted on its own; among the Node's candidates it only breaks ties, so a
Node keeps the member it had. Choosing among candidates: only alive or leaving ones if
there are any; among those, the own record, then the other record, then the best status,
then the name. So a restarted agent's new
member takes over from the old one at once, and an old name's later ``failed``/``left``
never lands on the Node once a newer member holds the record. A member claiming another
cluster is never ours. A ``k8s`` claim that names a Node the member is not bound to is
ignored and reported in ``unverified``.

Pure: data in, a match out. No I/O, no logging, no clock. Used by ``plan_labels`` and
``plan_publish`` (both through ``match_for``/``match_members``, with the one
``PlanSettings``); must not import either of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from serfbridge.kubemodels import NodeInfo
from serfbridge.plan_settings import PlanSettings
from serfbridge.rpc.models import Member

K8S_TAG = "k8s"
_ALIVE = ("alive", "leaving")
_STATUS_RANK = {"alive": 0, "leaving": 1, "failed": 2, "left": 3}
#: Node address types that are IPs (``Hostname`` and ``InternalDNS`` are not).
_IP_TYPES = ("InternalIP", "ExternalIP")


@dataclass(frozen=True)
class Record:
    """The identity annotations on a Node."""

    member: str
    addr: str  # ip:port, [ip]:port for IPv6; "" when not recorded
    by: str  # the node name of the bridge that wrote it; "" for records older than this key

    def own(self, node: str) -> bool:
        return self.by == node


@dataclass(frozen=True)
class Binding:
    """The member that speaks for a Node, and why it is believed."""

    member: Member
    how: str  # "own agent" | "own record" | "own address" | "record" | "address"
    bridged: bool  # the Node's own bridge recorded this member: it writes the Node itself
    recorded_by: str  # what P/serf-recorded-by says once the Node is written for it


@dataclass(frozen=True)
class Match:
    bindings: Mapping[str, Binding]
    unverified: tuple[str, ...] = ()  # names of members whose k8s claim was ignored

    def members(self) -> dict[str, Member]:
        return {node: b.member for node, b in self.bindings.items()}


@dataclass(frozen=True)
class Keys:
    """The annotation keys of the record, under the label prefix."""

    member: str
    addr: str
    by: str

    @classmethod
    def for_prefix(cls, prefix: str) -> Keys:
        return cls(f"{prefix}/serf-member", f"{prefix}/serf-addr", f"{prefix}/serf-recorded-by")


def maybe_claim(member: Member) -> tuple[str, str] | None:
    """(cluster, node) from the member's ``k8s`` tag, or None. A hint, never proof."""
    cluster, sep, node = member.tags.get(K8S_TAG, "").partition("/")
    return (cluster, node) if sep and cluster and node else None


def member_addr(member: Member) -> str:
    """``ip:port`` as ``P/serf-addr`` records it."""
    if ":" in member.addr:
        return f"[{member.addr}]:{member.port}"
    return f"{member.addr}:{member.port}"


def maybe_record(node: NodeInfo, keys: Keys) -> Record | None:
    name = node.annotations.get(keys.member, "")
    if not name:
        return None
    return Record(name, node.annotations.get(keys.addr, ""), node.annotations.get(keys.by, ""))


def match(
    members: Iterable[Member],
    nodes: Mapping[str, NodeInfo],
    *,
    cluster: str,
    prefix: str,
    self_node: str,
    self_member: str | None,
) -> Match:
    """Node name -> its member, by the rule above; plus the claims that were ignored."""
    keys = Keys.for_prefix(prefix)
    ours = [m for m in members if m.name == self_member or not _foreign(m, cluster)]
    records = {name: r for name, info in nodes.items() if (r := maybe_record(info, keys))}
    candidates = _candidates(ours, nodes, records=records)
    bindings: dict[str, Binding] = {}
    for node, found in candidates.items():
        if found:
            binding = _choose(found, records.get(node), node=node, writer=self_node)
            if maybe_claim(binding.member) == (cluster, node):  # its own bridge runs there
                binding = replace(binding, bridged=True)
            bindings[node] = binding
    mine = [m for m in ours if m.name == self_member]
    if mine and self_node in nodes:  # our agent may sit at an address the API does not know
        bindings[self_node] = Binding(mine[0], "own agent", bridged=True, recorded_by=self_node)
    bound = {b.member.name: node for node, b in bindings.items()}
    unverified = tuple(
        sorted(
            m.name
            for m in ours
            if (claim := maybe_claim(m)) is not None
            and claim[0] == cluster
            and claim[1] != bound.get(m.name)
        )
    )
    return Match(bindings, unverified)


def match_for(
    members: Iterable[Member], nodes: Mapping[str, NodeInfo], *, settings: PlanSettings
) -> Match:
    """``match`` with this bridge's settings: what both planners call."""
    return match(
        members,
        nodes,
        cluster=settings.cluster,
        prefix=settings.prefix,
        self_node=settings.self_node,
        self_member=settings.self_member,
    )


def match_members(
    members: Iterable[Member], nodes: Mapping[str, NodeInfo], *, settings: PlanSettings
) -> dict[str, Member]:
    """Node name -> the member that speaks for it."""
    return match_for(members, nodes, settings=settings).members()


def _foreign(member: Member, cluster: str) -> bool:
    claim = maybe_claim(member)
    return claim is not None and claim[0] != cluster


def _candidates(
    members: Sequence[Member],
    nodes: Mapping[str, NodeInfo],
    *,
    records: Mapping[str, Record],
) -> dict[str, list[Member]]:
    """Node -> the members vouched for by its own record, or by an address only it has.

    A member named by some Node's own record belongs to that Node: it is no address
    candidate elsewhere."""
    own_names = {r.member: n for n, r in records.items() if r.own(n)}
    own_addrs = _unique({n: [r.addr] for n, r in records.items() if r.own(n) and r.addr})
    api_addrs = _unique(
        {n: [a for t, a in info.addresses if t in _IP_TYPES] for n, info in nodes.items()}
    )
    result: dict[str, list[Member]] = {n: [] for n in nodes}
    for member in members:
        node = own_names.get(member.name)
        if node is None:
            node = own_addrs.get(member_addr(member)) or api_addrs.get(member.addr)
        if node is not None and node in result:
            result[node].append(member)
    return result


def _unique(addresses: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """address -> node, for addresses that belong to exactly one Node."""
    owners: dict[str, set[str]] = {}
    for node, addrs in addresses.items():
        for addr in addrs:
            owners.setdefault(addr, set()).add(node)
    return {a: next(iter(ns)) for a, ns in owners.items() if len(ns) == 1}


def _choose(found: Sequence[Member], record: Record | None, *, node: str, writer: str) -> Binding:
    def recorded(m: Member) -> int:
        if record is None or m.name != record.member:
            return 2
        return 0 if record.own(node) else 1

    alive = [m for m in found if m.status in _ALIVE]
    best = min(alive or found, key=lambda m: (recorded(m), _STATUS_RANK.get(m.status, 9), m.name))
    rank = recorded(best)
    if rank == 0:
        return Binding(best, "own record", bridged=True, recorded_by=node)
    if rank == 1 and record is not None:
        return Binding(best, "record", bridged=False, recorded_by=record.by)
    if record is not None and record.own(node) and record.addr == member_addr(best):
        # The Node's own record vouches for this ip:port: a restarted agent, new name.
        return Binding(best, "own address", bridged=False, recorded_by=node)
    return Binding(best, "address", bridged=False, recorded_by=writer)


#: The ``serf-status`` values only other bridges write on a Node: the majority's verdict.
VERDICTS = ("failed", "left")


def verdict(node: NodeInfo, settings: PlanSettings) -> str | None:
    """The majority's ``failed``/``left`` label on ``node``, if it carries one."""
    current = node.labels.get(settings.key("serf-status"))
    return current if current in VERDICTS else None


def may_write_for_others(
    node: str, binding: Binding, *, nodes: Mapping[str, NodeInfo], settings: PlanSettings
) -> bool:
    """True when ``node``'s own bridge may write for others (labels) or for the cluster
    (imports): it has recorded its member on its Node, and no verdict stands on it.

    Every bridge judges this from the API's records, its own Node included, so all agree
    on the candidates: a bridge that has not recorded itself yet is no candidate, not even
    in its own eyes. A bridge the majority has labelled failed is none either, even while
    its own agent still sees most peers alive: behind a cut link Serf declares the peers
    failed one by one, so for a few seconds the cut side can pass the partition guard and
    would label the majority's Nodes failed against the majority's own writes."""
    info = nodes[node]
    record = maybe_record(info, Keys.for_prefix(settings.prefix))
    return (
        record is not None
        and record.own(node)
        and record.member == binding.member.name
        and verdict(info, settings) is None
    )
