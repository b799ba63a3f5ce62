"""Which Services are published, and what their annotations ask for (to-serf).

A planner used by ``plan_publish``: NodePort and LoadBalancer Services that pass the
namespace, label-selector and opt-in/opt-out filters are eligible; ``P/replicas`` and
``P/priority`` are read here, a bad value reported as a problem, never raised; for
``externalTrafficPolicy: Local`` only Nodes with a ready endpoint may publish.

Pure: data in, data out. Must not: do I/O, or import ``config``.
"""

from __future__ import annotations

from collections.abc import Mapping

from serfbridge.kubemodels import ServiceInfo, SliceInfo
from serfbridge.plan_settings import PlanSettings
from serfbridge.selector import selector_matches

ELIGIBLE_TYPES = ("NodePort", "LoadBalancer")


def maybe_skip_reason(svc: ServiceInfo, settings: PlanSettings) -> str | None:
    """Why ``svc`` is not published at all, or None when it is eligible."""
    return _maybe_out_of_scope(svc, settings) or _maybe_not_opted_in(svc, settings)


def _maybe_out_of_scope(svc: ServiceInfo, settings: PlanSettings) -> str | None:
    """Why the bridge's settings leave ``svc`` out, whatever it asks for."""
    if settings.key("imported-by") in svc.labels:  # imported from the gossip: no loop back
        return "imported by serfbridge: never published"
    if svc.type not in ELIGIBLE_TYPES:
        return f"type {svc.type} is never published"
    if settings.namespaces and svc.namespace not in settings.namespaces:
        return "namespace not allowed"
    if svc.namespace in settings.exclude_namespaces:
        return "namespace excluded"
    if not selector_matches(svc.labels, settings.selector):
        return "label selector does not match"
    return None


def _maybe_not_opted_in(svc: ServiceInfo, settings: PlanSettings) -> str | None:
    """Why ``svc`` itself (its annotation, its ports) keeps it unpublished."""
    opt = svc.annotations.get(settings.key("publish"), "").strip().lower()
    if opt not in ("", "true", "false"):
        return f"{settings.key('publish')} must be true or false, got {opt!r}"
    if not (opt == "true" or (opt == "" and settings.publish_default)):
        return "not opted in"
    if not svc.ports:
        return "no ports"
    return None


def int_annotation(svc: ServiceInfo, key: str, *, default: int, problems: list[str]) -> int:
    """The Service's integer annotation ``key``, or ``default`` (and a problem) if not one."""
    raw = svc.annotations.get(key)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        problems.append(f"{svc.namespace}/{svc.name}: {key} must be an integer, got {raw!r}")
        return default


def local_endpoint_nodes(svc: ServiceInfo, slices: Mapping[str, SliceInfo]) -> set[str]:
    """Nodes with a ready endpoint of ``svc`` (``externalTrafficPolicy: Local``)."""
    mine = (
        s for s in slices.values() if (s.namespace, s.service_name) == (svc.namespace, svc.name)
    )
    return {ep.node_name for s in mine for ep in s.endpoints if ep.ready and ep.node_name}
