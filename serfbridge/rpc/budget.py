"""The tag budget: how many bytes a member's tags take, counted exactly as Serf counts them.

Serf encodes a member's tags as one magic byte (0xFF) followed by the tag map in
**old-spec msgpack** (no str8: strings of 32-255 bytes take a 3-byte raw16 header), and
memberlist refuses node meta longer than ``MetaMaxSize`` (512 upstream; 2048 in the old
Clommunity fork). See ``reference/serf-rpc.md`` §8.

Pure: no I/O. Used by the RPC client (refuse before sending), the Cloudy codec and the
publish planner.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgpack

#: memberlist's MetaMaxSize in upstream Serf, Debian's 0.9.4 included.
DEFAULT_TAG_LIMIT = 512


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
