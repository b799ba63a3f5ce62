"""Serf members + Kubernetes Nodes -> the label and annotation patches this bridge writes.

The one brain of the to-k8s direction: the event handler, the daemon and
``sync --dry-run`` all call ``plan_labels`` and hand the result to one applier. Rules
(DESIGN.md "Kubernetes keys" and "One writer"):

* a member is matched to a Node by ``matching.py``: what the Node's own bridge recorded
  on it through the API (``P/serf-member``, ``P/serf-addr``, ``P/serf-recorded-by``), or an
  address only that Node has; the ``k8s`` tag is a hint, and a claim that cannot be
  verified is ignored and counted; members of other clusters, and Cloudy nodes that are
  not Kubernetes nodes, are left alone;
* ``P/serf-status`` follows the member's status; allowed tags become ``P/tag.<key>`` when
  key and value are valid label syntax, everything else is skipped and counted;
* only keys listed in the Node's ``P/owned-labels`` are ever removed, and only inside
  ``P/``: labels anyone else set are never touched;
* a Node whose member is alive is written by its own bridge (which records its agent's
  member on it); a failed, left or vanished member's Node, and an alive one no bridge of
  its own has recorded (a Node with no bridge), by the alive bridge ranked first by
  rendezvous hash of the Node's name among the bridges that recorded themselves;
* a ``failed`` or ``left`` label is the majority's verdict and only the majority clears it:
  once the member is alive again, the first-ranked bridge (not the Node's own) writes it
  back, unless no other bridge is there to do it;
* the majority's view wins: a bridge that does not see more than half of the cluster's
  Nodes alive (Nodes whose member left gracefully do not count: a goodbye is no sign of a
  partition) writes nothing at all, its own Node included. On a mesh partition the
  isolated node may still reach its API; its own "alive" is not news the rest of the
  cluster agrees with, and writing it would fight the majority's verdict.

The failure hold is data (``failure_hold``): the caller passes a ``FailureHold`` with its
own clock's ``now`` and keeps the one the plan returns (``LabelPlan.hold``) for its next
pass, looking again at ``LabelPlan.recheck_at``.

Pure: data in, a plan out. No I/O, no logging, no clock. Must not import ``config``.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from serfbridge import matching, rendezvous
from serfbridge.failure_hold import FailureHold, settle
from serfbridge.kubemodels import NodeInfo
from serfbridge.plan_settings import PlanSettings
from serfbridge.rpc.models import Member

#: The planner's input (``plan_settings``), under the name this module always used.
LabelSettings = PlanSettings

K8S_TAG = matching.K8S_TAG
UNVERIFIED = "k8s tag claims a Node it cannot be verified for"
_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_WRITER_STATES = ("alive", "leaving")  # the Node's own bridge is up and writes for itself
_UNVERIFIED_NAMED = 3  # an unverified-claims note names this many members, then counts


def is_label_name(name: str) -> bool:
    return _LABEL_NAME.fullmatch(name) is not None


def is_label_value(value: str) -> bool:
    return _LABEL_VALUE.fullmatch(value) is not None


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
    #: The failure hold to pass in next time (first-seen times kept), with a fresh ``now``.
    hold: FailureHold = field(default_factory=lambda: FailureHold.one_shot(0.0))
    #: When a held-back failure settles: the caller's clock, None when nothing is held.
    recheck_at: float | None = None


# --- what a Node should carry -----------------------------------------------------------


def _clean(text: str) -> str:
    """Gossip strings may hold undecodable bytes (surrogates); the API needs valid UTF-8."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def desired_metadata(
    member: Member,
    settings: LabelSettings,
    *,
    skipped: Counter[str],
    recorded_by: str | None = None,
) -> tuple[dict[str, str], dict[str, str]]:
    """The labels and annotations ``member`` maps to; rejects are counted in ``skipped``.

    ``recorded_by`` is the ``P/serf-recorded-by`` to write (``matching.Binding``); by
    default this bridge's own node, as when it writes its own Node.
    """
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
    addr = matching.member_addr(member)
    tags_json = json.dumps(
        {_clean(k): _clean(v) for k, v in member.tags.items()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    annotations = {
        settings.key("serf-member"): _clean(member.name),
        settings.key("serf-addr"): addr,
        settings.key("serf-recorded-by"): recorded_by or settings.self_node,
        settings.key("serf-tags"): tags_json,
        settings.key("owned-labels"): ",".join(sorted(labels)),
    }
    return labels, annotations


def owned_labels(node: NodeInfo, settings: LabelSettings) -> set[str]:
    """Label keys this bridge set earlier (never anything outside the prefix)."""
    listed = node.annotations.get(settings.key("owned-labels"), "")
    return {k for k in listed.split(",") if k.startswith(f"{settings.prefix}/")}


def _owned_annotations(settings: LabelSettings) -> list[str]:
    keys = ("serf-member", "serf-addr", "serf-recorded-by", "serf-tags", "owned-labels")
    return [settings.key(k) for k in keys]


def diff_metadata(
    node: NodeInfo,
    labels: Mapping[str, str],
    *,
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
    *,
    settings: LabelSettings,
    hold: FailureHold | None = None,
) -> LabelPlan:
    """The patches this bridge (``settings.self_node``) must make, and what it skipped.

    ``hold`` says which failed members are too freshly failed to act on (``settle``):
    when a partition starts, peers are declared failed one by one over a few seconds, and
    a failure label written in that window would slip past the partition guard. None is
    a one-shot caller's hold: nothing is held back.
    """
    settled = settle(members, hold if hold is not None else FailureHold.one_shot(0.0))
    held = settled.unsettled
    found = matching.match_for(members, nodes, settings=settings)
    skipped: Counter[str] = Counter()
    notes = _unverified_notes(found, skipped)
    guard = _maybe_partition_guard(found.members())
    if guard is not None:
        return LabelPlan((), dict(skipped), (guard, *notes), settled.hold, settled.recheck_at)
    writers = _writers(found, nodes, settings=settings)
    patches = []
    for name in sorted(nodes):
        binding = found.bindings.get(name)
        if binding is not None and binding.member.name in held:
            notes.append(
                f"{name}: member {binding.member.name} failed recently; waiting to be sure"
            )
            continue
        patch = _maybe_patch(
            name, binding, node=nodes[name], writers=writers, settings=settings, skipped=skipped
        )
        if patch is not None:
            patches.append(patch)
    return LabelPlan(tuple(patches), dict(skipped), tuple(notes), settled.hold, settled.recheck_at)


def _unverified_notes(found: matching.Match, skipped: Counter[str]) -> list[str]:
    """The k8s claims ``matching`` could not verify: counted, and named in one note."""
    if not found.unverified:
        return []
    skipped[UNVERIFIED] = len(found.unverified)
    shown = ", ".join(repr(n) for n in found.unverified[:_UNVERIFIED_NAMED])
    hidden = len(found.unverified) - _UNVERIFIED_NAMED
    more = f" and {hidden} more" if hidden > 0 else ""
    return [f"ignored unverifiable k8s claims of members {shown}{more}"]


def _maybe_partition_guard(matched: Mapping[str, Member]) -> str | None:
    """Why this bridge writes nothing at all (a minority, or a tie), or None."""
    alive = [n for n, m in matched.items() if m.status == "alive"]
    # A member that left said goodbye: it is no sign of a partition, so it does not count.
    present = [n for n, m in matched.items() if m.status != "left"]
    if not matched or 2 * len(alive) > len(present):
        return None
    return (
        f"partition guard: {len(alive)}/{len(present)} Nodes alive; "
        "this bridge is not in a majority and writes no labels"
    )


def _writers(
    found: matching.Match, nodes: Mapping[str, NodeInfo], *, settings: LabelSettings
) -> list[str]:
    """The Nodes whose own bridge is alive, recorded itself and carries no verdict: who may
    write for others."""
    alive = sorted(n for n, b in found.bindings.items() if b.member.status == "alive")
    return [
        n
        for n in alive
        if matching.may_write_for_others(n, found.bindings[n], nodes=nodes, settings=settings)
    ]


def _maybe_patch(
    name: str,
    binding: matching.Binding | None,
    *,
    node: NodeInfo,
    writers: Sequence[str],
    settings: LabelSettings,
    skipped: Counter[str],
) -> NodePatch | None:
    """The patch this bridge makes on ``name``, or None (not its to write, or no change)."""
    verdict = matching.verdict(node, settings)
    reason = _why_we_write(name, binding, writers=writers, settings=settings, verdict=verdict)
    if reason is None:
        return None
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    if binding is not None:
        labels, annotations = desired_metadata(
            binding.member, settings, skipped=skipped, recorded_by=binding.recorded_by
        )
    label_patch, ann_patch = diff_metadata(node, labels, annotations=annotations, settings=settings)
    patch = NodePatch(name, label_patch, ann_patch, reason)
    return None if patch.empty else patch


def _why_we_write(
    node: str,
    binding: matching.Binding | None,
    *,
    writers: Sequence[str],
    settings: LabelSettings,
    verdict: str | None,
) -> str | None:
    """Why this bridge is the one writer for ``node``, or None when it is not.

    ``verdict`` is the ``failed``/``left`` label other bridges put on the Node, if any. Only
    the majority writes one, so only the majority clears it: the Node's own bridge may
    still see itself alive behind a cut link (Serf's Lifeguard makes an isolated agent
    slow to declare its peers failed, so it can believe it is in the majority for a while).
    """
    member = binding.member if binding is not None else None
    up = member is not None and member.status in _WRITER_STATES
    others = [n for n in writers if n != node]
    if node == settings.self_node and up and not (verdict and others):
        return "own node"
    if binding is not None and binding.bridged and up and not verdict:
        return None  # its own bridge is up and writes it
    if settings.self_node not in writers:
        return None
    first = rendezvous.rank(node, others)[:1]
    if first != [settings.self_node]:
        return None
    if member is None:
        state = "gone from the gossip"
    elif up and verdict and binding is not None and binding.bridged:
        state = f"{member.status} again after {verdict}"
    elif up:
        state = f"{member.status} with no bridge of its own"
    else:
        state = member.status
    return f"member {state}; this bridge ranks first for {node}"
