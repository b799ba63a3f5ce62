"""The tag budget: how many bytes a member's tags take, counted exactly as Serf counts them,
and whether a tag set fits. The one owner of that rule: everything else asks here.

Serf encodes a member's tags as one magic byte (0xFF) followed by the tag map in
**old-spec msgpack** (no str8: strings of 32-255 bytes take a 3-byte raw16 header), and
memberlist refuses node meta longer than ``MetaMaxSize`` (512 upstream; 2048 in the old
Clommunity fork). See ``reference/serf-rpc.md`` §8.

Callers: the RPC client (``check_fits`` before sending a ``tags`` request), the Cloudy
codec (``cloudy.plan_services_tag``: ``check_fits``), placement (``fits``, for every trial
list on every node) and the publish planner (``encoded_tags_size`` for its report).
Pure: no I/O, no clock. Must not: know what a tag means (``services`` is Cloudy's).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgpack

from serfbridge import defaults
from serfbridge.errors import BudgetError

#: memberlist's MetaMaxSize in upstream Serf, Debian's 0.9.4 included.
DEFAULT_TAG_LIMIT = defaults.TAG_LIMIT


def encoded_tags_size(tags: Mapping[str, str]) -> int:
    """Bytes Serf's meta for ``tags`` takes: 1 magic byte + old-spec msgpack of the map."""
    # surrogateescape keeps arbitrary Go strings (not valid UTF-8) byte-exact.
    raw = {
        k.encode("utf-8", "surrogateescape"): v.encode("utf-8", "surrogateescape")
        for k, v in tags.items()
    }
    return 1 + len(msgpack.packb(raw, use_bin_type=False))


def merged_tags(
    current: Mapping[str, str], *, set_tags: Mapping[str, str], delete: Iterable[str] = ()
) -> dict[str, str]:
    """The agent's tag set after a ``tags`` request: current - delete + set (its merge rule)."""
    deleted = set(delete)
    result = {k: v for k, v in current.items() if k not in deleted}
    result.update(set_tags)
    return result


def fits(tags: Mapping[str, str], limit: int = DEFAULT_TAG_LIMIT) -> bool:
    """True when the agent would accept ``tags`` as its whole tag set."""
    return encoded_tags_size(tags) <= limit


def check_fits(tags: Mapping[str, str], *, limit: int, refusal: str) -> int:
    """The size of ``tags``, or ``BudgetError`` when it is over ``limit``.

    ``refusal`` is the message, with ``{size}`` and ``{limit}`` filled in (each caller says
    what was refused in its own words; the numbers and the rule are this module's).
    """
    size = encoded_tags_size(tags)
    if size > limit:
        raise BudgetError(refusal.format(size=size, limit=limit), size=size, limit=limit)
    return size
