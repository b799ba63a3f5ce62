"""Serf members + Kubernetes Nodes -> the label and annotation patches this bridge writes.

The one brain of the to-k8s direction: the event handler, the daemon and
``sync --dry-run`` all call ``plan_labels`` and hand the result to one applier. Rules
(DESIGN.md "Kubernetes keys" and "One writer"):

* a member is matched to a Node by its ``k8s`` tag (``<cluster>/<node>``), then by its
  address among the Node's addresses (only when unique), then by name, and last by the
  Node's ``P/serf-member`` annotation (the member its own bridge recorded, so a Node whose
  agent has no ``k8s`` tag, e.g. with the handler alone, is still recognised by every
  bridge); members of other clusters, and Cloudy nodes that are not Kubernetes nodes, are
  left alone;
* ``P/serf-status`` follows the member's status; allowed tags become ``P/tag.<key>`` when
  key and value are valid label syntax, everything else is skipped and counted;
* only keys listed in the Node's ``P/owned-labels`` are ever removed, and only inside
  ``P/``: labels anyone else set are never touched;
* a Node whose member is alive is written by its own bridge; a failed, left or vanished
  member's Node by the alive bridge ranked first by rendezvous hash of the Node's name,
  and only while this bridge sees more than half of the cluster's Nodes alive (Nodes
  whose member left gracefully do not count: a goodbye is no sign of a partition).

Pure: data in, a plan out. No I/O, no logging, no clock.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from serfbridge import rendezvous
from serfbridge.config import DEFAULT_TAG_ALLOW  # every tag but `services` and `k8s`
from serfbridge.errors import ConfigError
from serfbridge.kubemodels import NodeInfo
from serfbridge.rpc.models import Member

K8S_TAG = "k8s"
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_WRITER_STATES = ("alive", "leaving")  # the Node's own bridge is up and writes for itself
_STATUS_RANK = {"alive": 0, "leaving": 1, "failed": 2, "left": 3}


def is_label_name(name: str) -> bool:
    return _LABEL_NAME.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    return _LABEL_VALUE.fullmatch(value) is not None


@dataclass(frozen=True)
class LabelSettings:
    self_node: str
    cluster: str = "default"
    prefix: str = "serfbridge.io"
    tag_allow: str = DEFAULT_TAG_ALLOW
    self_member: str | None = None  # this agent's member name, authoritative for self_node

    def __post_init__(self) -> None:
        if len(self.prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(self.prefix):
            raise ConfigError(f"--label-prefix must be a DNS subdomain, got {self.prefix!r}")
        try:
            re.compile(self.tag_allow)
        except re.error as exc:
            raise ConfigError(f"--tag-allow is not a valid regex: {exc}") from exc

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"


@dataclass(frozen=True)
class NodePatch:
    """Keys to set (str) or remove (None) on one Node; only keys that differ are listed."""

    node: str
    labels: Mapping[str, str | None]
    annotations: Mapping[str, str | None]
    reason: str

    @property
    def empty(self) -> bool:
        return not self.labels and not self.annotations


@dataclass(frozen=True)
class LabelPlan:
    patches: tuple[NodePatch, ...]
    skipped: Mapping[str, int] = field(default_factory=dict)  # hostile gossip, counted
    notes: tuple[str, ...] = ()


# --- matching members to Nodes ----------------------------------------------------------


def maybe_k8s_claim(member: Member) -> tuple[str, str] | None:
    """(cluster, node) from the member's ``k8s`` tag, or None."""
    cluster, sep, node = member.tags.get(K8S_TAG, "").partition("/")
    return (cluster, node) if sep and cluster and node else None


def match_members(
    members: Iterable[Member], nodes: Mapping[str, NodeInfo], settings: LabelSettings
) -> dict[str, Member]:
    """Node name -> the member that speaks for it (best status first when several claim)."""
    by_addr: dict[str, list[str]] = {}
    recorded: dict[str, str] = {}
    for info in nodes.values():
        for _, addr in info.addresses:
            by_addr.setdefault(addr, []).append(info.name)
        member_name = info.annotations.get(settings.key("serf-member"))
        if member_name:
            recorded[member_name] = info.name
    claims: dict[str, list[Member]] = {}
    for member in members:
        node = _match_one(member, nodes, by_addr, recorded, settings)
        if node is not None:
            claims.setdefault(node, []).append(member)
    chosen = {node: min(ms, key=_preference) for node, ms in claims.items()}
    mine = [m for m in claims.get(settings.self_node, ()) if m.name == settings.self_member]
    if mine:  # our own agent is the truth about our Node, whatever a peer gossips
        chosen[settings.self_node] = mine[0]
    return chosen


def _match_one(
    member: Member,
    nodes: Mapping[str, NodeInfo],
    by_addr: Mapping[str, list[str]],
    recorded: Mapping[str, str],
    settings: LabelSettings,
) -> str | None:
    if member.name == settings.self_member:
        return settings.self_node if settings.self_node in nodes else None
    claim = maybe_k8s_claim(member)
    if claim is not None:
        cluster, node = claim
        return node if cluster == settings.cluster and node in nodes else None
    candidates = by_addr.get(member.addr, [])
    if len(candidates) == 1:
        return candidates[0]
    return member.name if member.name in nodes else recorded.get(member.name)


def _preference(member: Member) -> tuple[int, str]:
    return _STATUS_RANK.get(member.status, 9), member.name


# --- what a Node should carry -----------------------------------------------------------


def _clean(text: str) -> str:
    """Gossip strings may hold undecodable bytes (surrogates); the API needs valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def desired_metadata(
    member: Member, settings: LabelSettings, skipped: Counter[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and annotations ``member`` maps to; rejects are counted in ``skipped``."""
    allow = re.compile(settings.tag_allow)
    labels = {
        settings.key("serf-status"): member.status if is_label_value(member.status) else "unknown"
    }
    for key, value in sorted(member.tags.items()):
        if not allow.fullmatch(key):
            skipped["tag not allowed by --tag-allow"] += 1
        elif not is_label_name(f"tag.{key}"):
            skipped["tag key is not label syntax"] += 1
        elif not is_label_value(value):
            skipped["tag value is not label syntax"] += 1
        else:
            labels[settings.key(f"tag.{key}")] = value
    addr = (
        f"[{member.addr}]:{member.port}" if ":" in member.addr else f"{member.addr}:{member.port}"
    )
    tags_json = json.dumps(
        {_clean(k): _clean(v) for k, v in member.tags.items()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    annotations = {
        settings.key("serf-member"): _clean(member.name),
        settings.key("serf-addr"): addr,
        settings.key("serf-tags"): tags_json,
        settings.key("owned-labels"): ",".join(sorted(labels)),
    }
    return labels, annotations


def owned_labels(node: NodeInfo, settings: LabelSettings) -> set[str]:
    """Label keys this bridge set earlier (never anything outside the prefix)."""
    listed = node.annotations.get(settings.key("owned-labels"), "")
    return {k for k in listed.split(",") if k.startswith(f"{settings.prefix}/")}


def _owned_annotations(settings: LabelSettings) -> list[str]:
    return [settings.key(k) for k in ("serf-member", "serf-addr", "serf-tags", "owned-labels")]


def diff_metadata(
    node: NodeInfo,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    settings: LabelSettings,
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Only the keys that change: new or different values, and owned keys to remove."""
    label_patch: dict[str, str | None] = {
        k: v for k, v in labels.items() if node.labels.get(k) != v
    }
    for key in owned_labels(node, settings) - set(labels):
        if key in node.labels:
            label_patch[key] = None
    ann_patch: dict[str, str | None] = {
        k: v for k, v in annotations.items() if node.annotations.get(k) != v
    }
    for key in _owned_annotations(settings):
        if key not in annotations and key in node.annotations:
            ann_patch[key] = None
    return label_patch, ann_patch


# --- the plan -----------------------------------------------------------------------------


def plan_labels(
    members: Sequence[Member],
    nodes: Mapping[str, NodeInfo],
    settings: LabelSettings,
    *,
    unsettled: Collection[str] = (),
) -> LabelPlan:
    """The patches this bridge (``settings.self_node``) must make, and what it skipped.

    ``unsettled`` names failed members whose failure is too recent to act on: when a
    partition starts, peers are declared failed one by one over a few seconds, and a
    failure label written in that window would slip past the partition guard. The daemon
    holds failures back this way (``--failure-hold``); one-shot callers pass nothing.
    """
    matched = match_members(members, nodes, settings)
    alive = sorted(n for n, m in matched.items() if m.status == "alive")
    # A member that left said goodbye: it is no sign of a partition, so it does not count.
    present = [n for n, m in matched.items() if m.status != "left"]
    guarded = 2 * len(alive) <= len(present)
    notes = (
        [
            f"partition guard: {len(alive)}/{len(present)} Nodes alive; "
            "not writing failure labels for others"
        ]
        if guarded and matched
        else []
    )
    skipped: Counter[str] = Counter()
    patches = []
    for name in sorted(nodes):
        member = matched.get(name)
        if member is not None and member.name in unsettled:
            notes.append(f"{name}: member {member.name} failed recently; waiting to be sure")
            continue
        reason = _why_we_write(name, member, alive, guarded, settings)
        if reason is None:
            continue
        if member is None:
            labels: dict[str, str] = {}
            annotations: dict[str, str] = {}
        else:
            labels, annotations = desired_metadata(member, settings, skipped)
        label_patch, ann_patch = diff_metadata(nodes[name], labels, annotations, settings)
        patch = NodePatch(name, label_patch, ann_patch, reason)
        if not patch.empty:
            patches.append(patch)
    return LabelPlan(tuple(patches), dict(skipped), tuple(notes))


def _why_we_write(
    node: str, member: Member | None, alive: Sequence[str], guarded: bool, settings: LabelSettings
) -> str | None:
    """Why this bridge is the one writer for ``node``, or None when it is not."""
    if member is not None and member.status in _WRITER_STATES:
        return "own node" if node == settings.self_node else None
    if guarded or settings.self_node not in alive:
        return None
    first = rendezvous.rank(node, [n for n in alive if n != node])[:1]
    if first != [settings.self_node]:
        return None
    state = member.status if member is not None else "gone from the gossip"
    return f"member {state}; this bridge ranks first for {node}"
