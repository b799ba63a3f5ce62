"""pytest fixtures for the real kube-apiserver (tests.lab.apiserver), loaded by conftest.

- ``kube_apiserver``: one AlwaysAllow apiserver + etcd for the whole session.
- ``rbac_apiserver`` / ``nowatch_apiserver``: started on demand (module scope) for RBAC
  and deterministic-410 tests; ``private_apiserver`` is per test, for outages.
- ``kube_admin``: a `KubeClient` with the admin kubeconfig; ``kube_objects`` creates
  Nodes, Services and EndpointSlices with unique names and deletes them afterwards.

A missing binary fails the test with the install command (MissingComponent); nothing is
skipped. On failure, the tail of every running apiserver/etcd log is attached to the report.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from serfbridge import kube
from serfbridge.errors import KubeNotFound
from serfbridge.kube_cache import Change, KubeCache
from tests.lab.apiserver import LabApiServer, TokenUser, serfbridge_service_account

_RUNNING: list[LabApiServer] = []
_NAMES = itertools.count(1)
SLICES = "/apis/discovery.k8s.io/v1beta1"


def _start(lab: LabApiServer) -> LabApiServer:
    lab.start()
    _RUNNING.append(lab)
    return lab


def _stop(lab: LabApiServer) -> None:
    _RUNNING.remove(lab)
    lab.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed and _RUNNING:
        report.sections.append(
            ("kube-apiserver/etcd logs", "\n".join(x.logs(40) for x in _RUNNING))
        )


@pytest.fixture(scope="session")
def kube_apiserver() -> Iterator[LabApiServer]:
    lab = _start(LabApiServer())
    yield lab
    _stop(lab)


@pytest.fixture(scope="module")
def rbac_apiserver() -> Iterator[LabApiServer]:
    """RBAC mode; users: the serfbridge ServiceAccount token, and ``nobody`` (no bindings)."""
    users = [
        serfbridge_service_account(),
        TokenUser("nobody", "nobody-token", ("system:authenticated",)),
    ]
    lab = _start(LabApiServer(authorization_mode="RBAC", users=users))
    yield lab
    _stop(lab)


@pytest.fixture(scope="module")
def nowatch_apiserver() -> Iterator[LabApiServer]:
    """``--watch-cache=false``: a watch from a compacted revision gets 410 for sure."""
    lab = _start(LabApiServer(watch_cache=False))
    yield lab
    _stop(lab)


@pytest.fixture
def private_apiserver() -> Iterator[LabApiServer]:
    """A fresh apiserver for one test (it may stop and restart it)."""
    lab = _start(LabApiServer())
    yield lab
    _stop(lab)


def client_for(lab: LabApiServer, user: TokenUser | None = None) -> kube.KubeClient:
    path = lab.kubeconfig_for(user) if user else lab.kubeconfig
    return kube.load_client(str(path), env={})


@pytest.fixture
def kube_admin(kube_apiserver) -> Iterator[kube.KubeClient]:
    client = client_for(kube_apiserver)
    yield client
    client.close()


class KubeObjects:
    """Create/update/delete test objects as admin; everything created is deleted at teardown."""

    def __init__(self, client: kube.KubeClient) -> None:
        self.client = client
        self.created: list[tuple[str, str, str | None]] = []  # (path, resource, namespace)

    @staticmethod
    def name(prefix: str) -> str:
        return f"{prefix}-{next(_NAMES)}-{int(time.time() * 1000) % 100000}"

    def create_node(self, name: str, *, labels=None, annotations=None, ready=True) -> dict:
        meta = {"name": name, "labels": labels or {}, "annotations": annotations or {}}
        body = {
            "metadata": meta,
            "status": {
                "addresses": [{"type": "InternalIP", "address": "10.0.0.9"}],
                "conditions": [{"type": "Ready", "status": str(ready)}],
            },
        }
        return self._create("/api/v1/nodes", "nodes", None, name, body)

    def create_service(self, name: str, namespace: str = "default", *, annotations=None) -> dict:
        body = {
            "metadata": {"name": name, "annotations": annotations or {}},
            "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}]},
        }
        path = f"/api/v1/namespaces/{namespace}/services"
        return self._create(path, "services", namespace, name, body)

    def create_slice(self, name: str, service: str, node: str, namespace: str = "default") -> dict:
        body = {
            "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {
                    "addresses": ["10.1.0.1"],
                    "conditions": {"ready": True},
                    "topology": {"kubernetes.io/hostname": node},
                }
            ],
        }
        path = f"{SLICES}/namespaces/{namespace}/endpointslices"
        return self._create(path, "endpointslices", namespace, name, body)

    def _create(self, collection: str, resource: str, namespace, name: str, body: dict) -> dict:
        reply = self.client.request(
            "POST", collection, verb="create", resource=resource, namespace=namespace, body=body
        )
        self.created.append((f"{collection}/{name}", resource, namespace))
        return reply

    def patch(self, path: str, resource: str, body: dict, namespace: str | None = None) -> dict:
        return self.client.request(
            "PATCH",
            path,
            verb="patch",
            resource=resource,
            namespace=namespace,
            body=body,
            content_type=kube.MERGE_PATCH,
        )

    def label_node(self, name: str, labels: dict) -> dict:
        return self.patch(f"/api/v1/nodes/{name}", "nodes", {"metadata": {"labels": labels}})

    def delete(self, path: str, resource: str = "objects", namespace: str | None = None) -> None:
        with contextlib.suppress(KubeNotFound):
            self.client.request(
                "DELETE", path, verb="delete", resource=resource, namespace=namespace
            )

    def cleanup(self) -> None:
        for path, resource, namespace in reversed(self.created):
            self.delete(path, resource, namespace)


@pytest.fixture
def kube_objects(kube_admin) -> Iterator[KubeObjects]:
    objects = KubeObjects(kube_admin)
    yield objects
    objects.cleanup()


class ChangeLog:
    """An ``on_change`` recorder; ``gate`` can hold the watcher thread on a chosen change."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self.hold_on: Callable[[Change], bool] = lambda change: False
        self.held = threading.Event()
        self.release = threading.Event()

    def __call__(self, change: Change) -> None:
        self.changes.append(change)
        if self.hold_on(change):
            self.held.set()
            self.release.wait(60)

    def for_key(self, kind: str, key: str) -> list[str]:
        """ "added" / "modified" / "deleted" for each recorded change of one object."""
        kinds = {(True, False): "added", (False, False): "modified", (False, True): "deleted"}
        return [
            kinds[(c.old is None, c.new is None)]
            for c in self.changes
            if c.kind == kind and c.key == key
        ]

    def deletions(self) -> list[Change]:
        return [c for c in self.changes if c.new is None]


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")


@pytest.fixture
def start_cache() -> Iterator[Callable[..., KubeCache]]:
    """``start_cache(client, **options)`` -> a started KubeCache, stopped at teardown."""
    caches: list[KubeCache] = []

    def start(client: kube.KubeClient, **options) -> KubeCache:
        cache = KubeCache(client, **options).start()
        caches.append(cache)
        return cache

    yield start
    for cache in caches:
        cache.stop()
