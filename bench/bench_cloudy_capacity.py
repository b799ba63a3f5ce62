"""How many typical Kubernetes entries fit in one node's Serf tag budget.

The node also carries Cloudy's own ``serf`` self-entry (``SERF_instance_running``, port
5000, republished by avahi-service's cron) and serfbridge's ``k8s`` matching tag. Entries
are added one by one through ``plan_services_tag`` (the same check ``publish`` and the
daemon use) until it refuses; the figure is the last count it accepted.

Run: ``.venv/bin/python -m bench.bench_cloudy_capacity``.
"""

from __future__ import annotations

from serfbridge.cloudy import (
    Entry,
    make_entry,
    owner_txt,
    plan_services_tag,
)
from serfbridge.errors import BudgetError
from serfbridge.rpc.budget import DEFAULT_TAG_LIMIT, encoded_tags_size

CLUSTER = "cloudy-k8s"
NODE = "k8s-node1"
HOST = f"{NODE}.guifi.local"
IP = "10.139.40.51"
#: (namespace, service) pairs as a small community cluster would name them.
SERVICES = [
    ("default", "nginx"),
    ("monitoring", "grafana"),
    ("monitoring", "prometheus"),
    ("apps", "nextcloud"),
    ("apps", "gitea"),
    ("media", "jellyfin"),
    ("cloudy", "peerstreamer"),
    ("cloudy", "syncthing"),
    ("db", "postgres"),
    ("iot", "mosquitto"),
    ("web", "wordpress"),
    ("dns", "pihole"),
    ("chat", "matrix-synapse"),
    ("logging", "loki"),
    ("ci", "drone"),
    ("kube-system", "kubernetes-dashboard"),
    ("apps", "vaultwarden"),
    ("apps", "home-assistant"),
    ("media", "navidrome"),
    ("web", "ghost"),
]


def serf_self_entry() -> Entry:
    """What Cloudy's avahi-service cron publishes for the local agent."""
    return make_entry(
        description="SERF instance running",
        type="serf",
        port=5000,
        host=HOST,
        ip=IP,
        microcloud=CLUSTER,
    )


def k8s_entry(index: int) -> Entry:
    """The index-th typical serfbridge entry (cycling through SERVICES)."""
    namespace, service = SERVICES[index % len(SERVICES)]
    port = 30000 + 37 * index
    return make_entry(
        description=f"{namespace}_{service}",
        type="kubernetes",
        port=port,
        txt=owner_txt(cluster=CLUSTER, namespace=namespace, service=service, port=port),
        host=HOST,
        ip=IP,
        microcloud=CLUSTER,
    )


def capacity(limit: int, *, other_tags: dict[str, str]) -> tuple[int, int]:
    """(k8s entries that fit next to the serf self-entry, bytes the tag set then uses)."""
    current = dict(other_tags)
    entries = [serf_self_entry()]
    used = encoded_tags_size(current)
    while len(entries) <= 10 * len(SERVICES):
        candidate = [*entries, k8s_entry(len(entries) - 1)]
        try:
            change = plan_services_tag(current, candidate, limit=limit)
        except BudgetError:
            break
        entries = candidate
        used = encoded_tags_size({**current, **change.set_tags})
    return len(entries) - 1, used


def main() -> None:
    variants = {"with the k8s tag": {"k8s": f"{CLUSTER}/{NODE}"}, "no other tags": {}}
    for limit in (DEFAULT_TAG_LIMIT, 2048):
        for label, other_tags in variants.items():
            count, used = capacity(limit, other_tags=other_tags)
            note = " (names repeat, so this flatters bzip2)" if count > len(SERVICES) else ""
            print(
                f"limit {limit} B, {label}: {count} typical kubernetes entries fit next to "
                f"the serf self-entry; {used} B used{note}"
            )


if __name__ == "__main__":
    main()
