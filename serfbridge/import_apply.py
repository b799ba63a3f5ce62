"""Apply an imports plan: the one place imported Services and EndpointSlices are written.

Role: send each ``ImportWrite`` of a plan (``plan_imports``) in its order through an
``ObjectWriter`` (``kube_writes.KubeObjects``), skip a conflict or a not-found (the next
pass plans again from fresh data), and write what the server stored through into the
cache, so a pass before its watch event does not repeat it. Callers: ``bridge``
(``import_pass``, ``prune_imports``), which re-exports ``apply_import_plan``.

Must not: plan, re-read or re-diff anything (the writes are sent as planned), or import
``kubernetes`` (the writer does the requests).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from serfbridge.errors import (
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubeUnavailable,
)
from serfbridge.kube_json import Json
from serfbridge.kubemodels import ServiceInfo, SliceInfo
from serfbridge.plan_imports import ImportPlan, ImportWrite

if TYPE_CHECKING:  # the cache pulls in `kubernetes`
    from serfbridge.kube_cache import KubeCache

log = logging.getLogger(__name__)

#: ImportWrite.kind -> the cache's store of that kind.
_CACHE_KINDS = {"Service": "services", "EndpointSlice": "endpointslices"}


class ObjectWriter(Protocol):
    """The imports' side of applying (``kube_writes.KubeObjects`` fits)."""

    def create(self, kind: str, *, namespace: str, body: Json) -> ServiceInfo | SliceInfo: ...

    def replace(
        self, kind: str, *, namespace: str, name: str, body: Json
    ) -> ServiceInfo | SliceInfo: ...

    def delete(
        self, kind: str, *, namespace: str, name: str, resource_version: str = ""
    ) -> None: ...


def apply_import_plan(kube: ObjectWriter, plan: ImportPlan, *, cache: KubeCache | None) -> int:
    """Send each planned write in order; returns how many the server took.

    A conflict (stale resourceVersion, or a create racing another) and a not-found are
    skipped: the next pass plans again from fresh data. A write the server refuses as
    invalid (any other 4xx) is logged and skipped, so one object cannot hold up the rest.
    Forbidden and unavailable are raised: the runner stops or retries the direction.
    What the server stored is written through into ``cache``, so a pass before its watch
    event does not repeat it.
    """
    writes = 0
    for write in plan.writes:
        try:
            stored = _send_import(kube, write)
        except KubeError as exc:
            _skip_or_raise(exc, write, cache=cache)
            continue
        writes += 1
        log.info("import: %s", write.describe())
        _note_written(cache, write, stored=stored)
    return writes


def _skip_or_raise(exc: KubeError, write: ImportWrite, *, cache: KubeCache | None) -> None:
    if isinstance(exc, KubeForbidden | KubeUnavailable):
        raise exc
    if isinstance(exc, KubeConflict | KubeNotFound):
        log.info("import: %s skipped (%s); the next pass retries", write.describe(), exc)
        if isinstance(exc, KubeNotFound) and write.verb == "delete":
            _note_written(cache, write, stored=None)  # already gone
        return
    log.warning("import: %s refused by the API: %s", write.describe(), exc)


def _note_written(
    cache: KubeCache | None, write: ImportWrite, *, stored: ServiceInfo | SliceInfo | None
) -> None:
    if cache is not None:
        key = f"{write.namespace}/{write.name}"
        cache.note_written(_CACHE_KINDS[write.kind], key=key, obj=stored)


def _send_import(kube: ObjectWriter, write: ImportWrite) -> ServiceInfo | SliceInfo | None:
    where = {"namespace": write.namespace, "name": write.name}
    if write.verb == "delete":
        kube.delete(write.kind, **where, resource_version=write.resource_version)
        return None
    body = write.body or {}
    if write.verb == "create":
        return kube.create(write.kind, namespace=write.namespace, body=body)
    return kube.replace(write.kind, **where, body=body)
