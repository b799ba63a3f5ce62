"""What the planners need to know about this bridge: one frozen input value.

``config.Settings`` (everything the user configures) maps onto it in one place,
``Settings.plan_settings``; ``matching``, ``plan_labels`` and ``plan_publish`` all take this
same value, so no planner converts one settings type into another and none imports
``config``. ``LabelSettings`` and ``PublishSettings`` are its names in those modules.

Pure data, checked on construction with the same rules ``config_rules`` applies at
start (a planner built by hand in a test or a benchmark gets the same errors).
Must not: import ``config``, the planners, or anything with I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from serfbridge import defaults
from serfbridge.errors import ConfigError
from serfbridge.selector import parse_selector

_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


@dataclass(frozen=True)
class PlanSettings:
    """This bridge as the planners see it; ``self_member`` is its agent's member name."""

    self_node: str
    cluster: str = defaults.CLUSTER
    prefix: str = defaults.LABEL_PREFIX
    self_member: str | None = None  # authoritative for self_node (``matching``)
    tag_allow: str = defaults.TAG_ALLOW  # to-k8s: which tags become labels
    namespaces: frozenset[str] = frozenset()  # to-serf: empty = all
    exclude_namespaces: frozenset[str] = frozenset()
    selector: str = ""  # label selector: k=v, k!=v, k, !k (comma-separated)
    publish_default: bool = True
    replicas: int = defaults.REPLICAS
    cloud_name: str = defaults.CLOUD_NAME
    tag_limit: int = defaults.TAG_LIMIT
    import_type: str = ".*"  # imports: regex, full match on the Cloudy type
    import_cidr: tuple[str, ...] = ()  # imports: allowed endpoint networks; empty = any
    import_namespace: str = defaults.IMPORT_NAMESPACE

    def __post_init__(self) -> None:
        if len(self.prefix) > defaults.DNS_NAME_MAX or not _DNS_SUBDOMAIN.fullmatch(self.prefix):
            raise ConfigError(f"--label-prefix must be a DNS subdomain, got {self.prefix!r}")
        try:
            re.compile(self.tag_allow)
        except re.error as exc:
            raise ConfigError(f"--tag-allow is not a valid regex: {exc}") from exc
        parse_selector(self.selector)
        _check_imports(self)
        if self.replicas < 1:
            raise ConfigError(f"--replicas must be at least 1, got {self.replicas}")

    def key(self, name: str) -> str:
        """``<prefix>/<name>``: one of our label or annotation keys."""
        return f"{self.prefix}/{name}"


def _check_imports(settings: PlanSettings) -> None:
    try:
        re.compile(settings.import_type)
    except re.error as exc:
        raise ConfigError(f"--import-type is not a valid regex: {exc}") from exc
    for cidr in settings.import_cidr:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise ConfigError(f"--import-cidr: {cidr!r} is not a CIDR") from exc
