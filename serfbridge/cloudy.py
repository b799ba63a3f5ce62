"""Cloudy's avahi-ps ``services`` tag: the facade, and read-modify-write planning.

Everything Cloudy is reached through this module (``cloudy.make_entry``,
``cloudy.decode_services``, ...); it is split by job into ``cloudy_entry`` (the entry,
its sanitizer and owner mark), ``cloudy_codec`` (the byte format, bounded decoding and
its memo) and ``cloudy_search`` (what ``avahi-ps search`` prints). Here: the plan of a
read-modify-write of this node's own list (``upsert``, ``remove``, ``plan_services_tag``).

Callers: ``cli/services.py`` (``services``, ``publish``, ``unpublish``),
``local_services.py``, ``plan_publish.py`` and ``placement.py``, ``status``.

Must not: do I/O, log, or talk to the agent. Every function takes data and returns data
(a ``TagChange`` is a plan; someone else applies it). Errors raised here are only
``ServicesDecodeError`` (a peer's tag cannot be read), ``UsageError`` (a value we were
asked to publish would corrupt the list) and ``BudgetError`` (the tag set would not fit,
as ``rpc.budget`` counts it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from serfbridge.cloudy_codec import (
    CACHE_WEIGHT,
    MAX_DECODED_BYTES,
    MAX_ENCODED_CHARS,
    MAX_ITEMS,
    MAX_PROBLEMS,
    DecodeResult,
    decode_services,
    decode_services_report,
    encode_services,
    forget_encodings,
)
from serfbridge.cloudy_entry import (
    SERVICES_TAG,
    WIRE_KEYS,
    Entry,
    TagChange,
    is_owned_by,
    make_entry,
    maybe_owner,
    owner_txt,
    sanitize_entry,
)
from serfbridge.cloudy_search import (
    ALIVE,
    MemberInput,
    MemberLike,
    decode_members,
    filter_rows,
    search_json,
)
from serfbridge.rpc.budget import DEFAULT_TAG_LIMIT, check_fits, merged_tags

__all__ = [
    "ALIVE",
    "CACHE_WEIGHT",
    "MAX_DECODED_BYTES",
    "MAX_ENCODED_CHARS",
    "MAX_ITEMS",
    "MAX_PROBLEMS",
    "SERVICES_TAG",
    "WIRE_KEYS",
    "DecodeResult",
    "Entry",
    "MemberInput",
    "MemberLike",
    "TagChange",
    "decode_members",
    "decode_services",
    "decode_services_report",
    "encode_services",
    "filter_rows",
    "forget_encodings",
    "is_owned_by",
    "make_entry",
    "maybe_owner",
    "owner_txt",
    "plan_services_tag",
    "remove",
    "sanitize_entry",
    "search_json",
    "upsert",
]


# --- read-modify-write planning ---------------------------------------------------------


def upsert(entries: Sequence[Entry], new_entry: Entry) -> list[Entry]:
    """``entries`` with ``new_entry`` in place of those with its (type, port).

    Unlike avahi-ps (which appends and reverses the rest), the replaced entry keeps its
    position and the others their order, so republishing an unchanged entry gives the same
    tag value (no write). A new key is appended; duplicates of the key are dropped.
    """
    result: list[Entry] = []
    placed = False
    for entry in entries:
        if entry.key != new_entry.key:
            result.append(entry)
        elif not placed:
            result.append(new_entry)
            placed = True
    if not placed:
        result.append(new_entry)
    return result


def remove(entries: Sequence[Entry], type: str, *, port: str | int) -> list[Entry]:
    """``entries`` without those keyed (type, port); the others unchanged, in order."""
    return [e for e in entries if e.key != (type, str(port))]


def plan_services_tag(
    current_tags: Mapping[str, str], entries: Sequence[Entry], *, limit: int = DEFAULT_TAG_LIMIT
) -> TagChange:
    """The ``tags`` request that makes this node's ``services`` list ``entries``.

    No-op when the encoded value equals the current one (a legacy value that decodes the
    same is still rewritten, normalised). An empty list deletes the tag, as avahi-ps
    unpublish does. ``BudgetError`` when the node's whole tag set would exceed ``limit``.
    """
    if not entries:
        if SERVICES_TAG in current_tags:
            return TagChange(delete=(SERVICES_TAG,))
        return TagChange()
    encoded = encode_services(entries)
    if current_tags.get(SERVICES_TAG) == encoded:
        return TagChange()
    set_tags = {SERVICES_TAG: encoded}
    check_fits(
        merged_tags(current_tags, set_tags=set_tags),
        limit=limit,
        refusal="services tag would make this node's tags {size} bytes; the limit is {limit}",
    )
    return TagChange(set_tags=set_tags)
