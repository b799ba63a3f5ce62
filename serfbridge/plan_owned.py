"""Our Node + the tags we set from ``P/set-tags`` -> the ``P/owned-tags`` patch, if any.

Role: the pure planner of the one annotation the to-serf direction writes. ``plan_publish``
decides which tag keys this node owns (``PublishPlan.owned_tags``); recording them on our
Node lets the next pass (on any restart) know which tags it may delete. ``bridge.
publish_pass`` puts the result in its ``PublishPass`` and applies it with the rest, so
``--dry-run`` shows it. ``metadata_delta`` is the merge-patch diff it uses.

Only on a synced view (a partial one may lack our Node, or hold an old copy of it).

Pure: data in, a plan out. No I/O, no logging, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from serfbridge.kubemodels import NodeInfo
from serfbridge.plan_labels import NodePatch

REASON = "owned tags"


def metadata_delta(
    current: Mapping[str, str], wanted: Mapping[str, str | None]
) -> dict[str, str | None]:
    """The merge-patch entries that would change ``current``: set values, None to remove."""
    return {
        key: value
        for key, value in wanted.items()
        if (key in current if value is None else current.get(key) != value)
    }


def maybe_owned_tags_patch(
    node: NodeInfo | None, owned_tags: Sequence[str], *, key: str, synced: bool
) -> NodePatch | None:
    """The patch that records ``owned_tags`` under annotation ``key``; None when in place."""
    if node is None or not synced:
        return None
    delta = metadata_delta(node.annotations, {key: ",".join(owned_tags) or None})
    return NodePatch(node.name, {}, delta, REASON) if delta else None
