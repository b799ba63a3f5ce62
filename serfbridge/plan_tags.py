"""The agent's tags besides ``services``: our ``k8s`` claim and a Node's ``P/set-tags``.

A planner used by ``plan_publish`` (for this node, and for every peer's budget room): a
Node's ``P/set-tags`` annotation (a JSON object of strings) sets tags on its agent, the
keys it set before (``P/owned-tags``) and no longer sets are deleted, and ``k8s`` is
always ``<cluster>/<node>``. Reserved keys (ours, Cloudy's) are refused and reported.

Pure: data in, tags out. Must not: do I/O, or import ``config`` or ``plan_labels``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from serfbridge.cloudy_entry import SERVICES_TAG
from serfbridge.kubemodels import NodeInfo
from serfbridge.matching import K8S_TAG
from serfbridge.plan_settings import PlanSettings
from serfbridge.rpc.budget import merged_tags

#: Tags a Node's ``P/set-tags`` may never set: they are ours or Cloudy's.
RESERVED_TAGS = (SERVICES_TAG, K8S_TAG)


def desired_base_tags(
    current: Mapping[str, str],
    node: NodeInfo | None,
    *,
    settings: PlanSettings,
    node_name: str | None = None,
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
        set_tags={**wanted, K8S_TAG: f"{settings.cluster}/{node_name or settings.self_node}"},
        delete=stale,
    )
    return tags, tuple(sorted(wanted)), problems
