"""Read-modify-write of the local agent's ``services`` tag, with avahi-ps's semantics.

Used by ``serfbridge publish | unpublish`` (``cli/services.py``); the daemon publishes
through ``plan_publish`` and ``bridge.publish_pass`` instead. The rules: read the agent's
current tags, decode its list, change only the entries asked for (upsert keyed by (type,
port); foreign entries kept as they are), plan the ``tags`` request with
``cloudy.plan_services_tag`` (no request when the encoded value would not change, delete
the tag when the list is empty, refuse an oversized set with the sizes), and send it.
This module owns no format knowledge (that is ``cloudy.py``) and no wire knowledge (that
is ``rpc/``); it only sequences the two.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from serfbridge import cloudy
from serfbridge.cloudy import Entry, TagChange
from serfbridge.errors import LocalListUnreadable, SerfBridgeError
from serfbridge.rpc.client import SerfClient

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalServices:
    tags: dict[str, str]
    entries: list[Entry]


def read_local(client: SerfClient) -> LocalServices:
    """The agent's tags and its decoded ``services`` list (one ``stats`` round trip)."""
    tags = client.local_tags()
    value = tags.get(cloudy.SERVICES_TAG)
    if value is None:
        return LocalServices(tags, [])
    try:
        result = cloudy.decode_services_report(value)
    except SerfBridgeError as exc:
        raise LocalListUnreadable(
            f"this agent's own services tag cannot be decoded ({exc}); refusing to overwrite "
            "it. Inspect it with `serfbridge members --json`, or clear it with "
            "`serfbridge tags delete services`"
        ) from exc
    for problem in result.problems:
        log.warning("local services tag: %s", problem)
    return LocalServices(tags, list(result.entries))


def apply_entries(client: SerfClient, change: Callable[[list[Entry]], list[Entry]]) -> TagChange:
    """Read, apply ``change`` to the list, and write only if the encoded value changes."""
    local = read_local(client)
    plan = cloudy.plan_services_tag(local.tags, change(local.entries), limit=client.tag_limit)
    if not plan.noop:
        client.tags(plan.set_tags, plan.delete, current=local.tags)
    return plan


def publish(client: SerfClient, entry: Entry) -> TagChange:
    """Upsert ``entry`` (keyed by its type and port) into the local list."""
    return apply_entries(client, lambda entries: cloudy.upsert(entries, entry))


def unpublish(client: SerfClient, service_type: str, *, port: str) -> tuple[TagChange, bool]:
    """Remove the entry with (type, port); returns the change and whether one existed."""
    found: list[bool] = []

    def drop(entries: list[Entry]) -> list[Entry]:
        kept = cloudy.remove(entries, service_type, port=port)
        found.append(len(kept) != len(entries))
        return kept

    return apply_entries(client, drop), found[0]


def own_member_addr(client: SerfClient) -> str:
    """The address peers reach this agent at: its own member's address."""
    name = client.stats().get("agent", {}).get("name", "")
    for member in client.members():
        if member.name == name:
            return member.addr
    return ""


def service_types(rows: Sequence[dict[str, str]]) -> list[str]:
    """The distinct types in ``rows``, sorted like the Cloudy UI's tabs."""
    return sorted({row.get("s", "") for row in rows})
