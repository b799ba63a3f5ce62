"""What ``avahi-ps search`` prints, from the members' ``services`` tags.

Callers: ``serfbridge services`` (``cli/services.py``) and ``status``, through
``cloudy``. Rows are flat ``{"node_id": ..., "s": ..., ...}`` objects; a member whose tag
cannot be decoded is one warning, never an error.

Pure: data in, data out. Must not: do I/O or log.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Protocol

from serfbridge.cloudy_codec import decode_services_report
from serfbridge.cloudy_entry import SERVICES_TAG
from serfbridge.errors import ServicesDecodeError
from serfbridge.printable import valid_text

#: Only `search` rows of members with this status are listed (avahi-ps: -status=alive).
ALIVE = "alive"


class MemberLike(Protocol):
    """What ``decode_members`` needs of a member (``rpc.models.Member`` fits)."""

    @property
    def name(self) -> str: ...
    @property
    def status(self) -> str: ...
    @property
    def tags(self) -> Mapping[str, str]: ...


MemberInput = MemberLike | tuple[str, str, Mapping[str, str]]


# --- search (what avahi-ps search prints) -----------------------------------------------


def decode_members(members: Iterable[MemberInput]) -> tuple[list[dict[str, str]], list[str]]:
    """``avahi-ps search`` rows of the alive members, plus warnings naming bad members.

    Rows are ``{"node_id": <member name>, "s": ..., ..., "t": ...}`` in member order, then
    list order (avahi-ps prints them reversed; the set is the same). A member whose tag
    cannot be decoded contributes no rows and one warning; entry problems give one warning
    each. Members that are not alive, or have no ``services`` tag, are silently skipped.
    """
    rows: list[dict[str, str]] = []
    warnings: list[str] = []
    for member in members:
        name, status, tags = _member_fields(member)
        if status != ALIVE or SERVICES_TAG not in tags:
            continue
        try:
            result = decode_services_report(tags[SERVICES_TAG])
        except ServicesDecodeError as exc:
            warnings.append(f"member {name!r}: {exc}; its services are skipped")
            continue
        warnings.extend(f"member {name!r}: {problem}" for problem in result.problems)
        rows.extend({"node_id": name, **entry.to_wire()} for entry in result.entries)
    return rows, warnings


def _member_fields(member: MemberInput) -> tuple[str, str, Mapping[str, str]]:
    # rpc.models.Member is a named tuple too: tell it apart from a plain 3-tuple.
    if isinstance(member, tuple) and not hasattr(member, "_fields"):
        return member
    return member.name, member.status, member.tags  # type: ignore[union-attr]


def filter_rows(
    rows: Iterable[Mapping[str, str]], *, service_type: str | None = None, host: str | None = None
) -> list[dict[str, str]]:
    """The rows matching both filters (None or "" = no filter); avahi-ps ignores them.

    ``service_type`` matches ``s`` exactly (Cloudy's UI tabs are case-sensitive).
    ``host`` matches, case-insensitively, the ``m`` host, its first label
    (``cloudy-master`` for ``cloudy-master.guifi.local``), the ``node_id`` or the ``i`` ip.
    """
    return [
        dict(row)
        for row in rows
        if (not service_type or row.get("s") == service_type)
        and (not host or _host_matches(row, host))
    ]


def _host_matches(row: Mapping[str, str], host: str) -> bool:
    wanted = host.casefold()
    fqdn = row.get("m", "").casefold()
    candidates = {fqdn, fqdn.split(".", 1)[0], row.get("node_id", "").casefold(), row.get("i", "")}
    return wanted in candidates


def search_json(rows: Iterable[Mapping[str, str]]) -> str:
    """``avahi-ps search``'s line: ``[obj,obj,...]`` of jq -c objects, no trailing newline.

    avahi-ps emits rows in reverse order; ``search_json(reversed(rows))`` is byte-identical.
    Strict parsers (PHP's, in Cloudy's UI) reject a whole list for one invalid string, so
    undecodable bytes and lone surrogates from gossip become U+FFFD, as jq does.
    """
    objects = (
        json.dumps(
            {valid_text(k): valid_text(v) for k, v in r.items()},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        for r in rows
    )
    # jq -c escapes DEL, Python's json does not; DEL only occurs inside strings.
    return ("[" + ",".join(objects) + "]").replace("\x7f", "\\u007f")
