"""The imports pass: plan + apply in one place (``bridge``), the runner's status and gauges,
and the to-serf selection never publishing an imported Service."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from serfbridge import bridge, cloudy
from serfbridge.config import Settings
from serfbridge.errors import (
    KubeConflict,
    KubeError,
    KubeForbidden,
    KubeNotFound,
    KubeUnavailable,
)
from serfbridge.health import Metrics
from serfbridge.kube_json import parse_endpoint_slice, parse_service
from serfbridge.kubemodels import NodeInfo, ServiceInfo, ServicePort, SliceInfo
from serfbridge.passes import ImportRunner
from serfbridge.plan_select import maybe_skip_reason
from serfbridge.plan_settings import PlanSettings
from serfbridge.rpc.models import Member
from serfbridge.scheduler import Scheduler
from tests.test_passes import FakeSerf
from tests.test_scheduler import Clock

P = "serfbridge.io"


class FakeObjects:
    """FAKE ObjectWriter: records requests; ``faults`` maps (verb, name) to an error."""

    def __init__(self, faults: dict | None = None) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self.faults = faults or {}
        self.slice_version = "v1"

    def _stored(self, kind: str, body: dict) -> ServiceInfo | SliceInfo:
        return parse_service(body) if kind == "Service" else parse_endpoint_slice(body)

    def _maybe_fail(self, verb: str, name: str) -> None:
        if (verb, name) in self.faults:
            raise self.faults[(verb, name)]

    def create(self, kind, *, namespace, body):
        self._maybe_fail("create", body["metadata"]["name"])
        self.calls.append(("create", kind, body["metadata"]["name"]))
        return self._stored(kind, body)

    def replace(self, kind, *, namespace, name, body):
        self._maybe_fail("replace", name)
        self.calls.append(("replace", kind, name))
        return self._stored(kind, body)

    def delete(self, kind, *, namespace, name, resource_version=""):
        self._maybe_fail("delete", name)
        self.calls.append(("delete", kind, name))


class NotingCache:
    """The write-through part of ``KubeCache``."""

    def __init__(self) -> None:
        self.noted: list[tuple[str, str, object]] = []

    def note_written(self, kind, *, key, obj) -> None:
        self.noted.append((kind, key, obj))


def serf_view(*publishers: Member) -> bridge.SerfView:
    me = Member("serf-k1", "10.0.0.1", 7946, {"k8s": "lab/k1"}, "alive")
    return bridge.SerfView((me, *publishers), "serf-k1", {})


def publisher(name: str, type: str, ip: str, port: str = "8384") -> Member:
    entries = [cloudy.Entry(type, "d", "h.local", ip, port, "mc", "")]
    return Member(name, ip, 7946, {"services": cloudy.encode_services(entries)}, "alive")


RECORD = {f"{P}/serf-member": "serf-k1", f"{P}/serf-recorded-by": "k1"}  # k1's bridge ran
NODES = {"k1": NodeInfo("k1", "k1", {}, RECORD, (("InternalIP", "10.0.0.1"),), True)}
SETTINGS = Settings(node_name="k1", cluster="lab", import_services=True)
VIEW = bridge.KubeView(NODES)
SYNC = serf_view(publisher("a", "syncthing", "192.0.2.10"))


def test_import_pass_applies_in_order_and_writes_through() -> None:
    objects, cache = FakeObjects(), NotingCache()
    plan, writes = bridge.import_pass(SYNC, VIEW, kube=objects, settings=SETTINGS, cache=cache)  # type: ignore[arg-type]
    assert objects.calls == [
        ("create", "Service", "syncthing"),
        ("create", "EndpointSlice", "syncthing-p8384"),
    ]
    assert writes == 2 and plan.writer == "k1"
    assert [(k, key) for k, key, _ in cache.noted] == [
        ("services", "cloudy/syncthing"),
        ("endpointslices", "cloudy/syncthing-p8384"),
    ]


@pytest.mark.parametrize(
    ("dry_run", "synced", "calls"),
    [
        pytest.param(True, True, 0, id="dry-run-writes-nothing"),
        pytest.param(False, False, 0, id="unsynced-writes-nothing"),
        pytest.param(False, True, 2, id="applies"),
    ],
)
def test_import_pass_dry_run_and_partial_view(dry_run: bool, synced: bool, calls: int) -> None:
    objects = FakeObjects()
    view = bridge.KubeView(NODES, synced=synced)
    plan, writes = bridge.import_pass(SYNC, view, kube=objects, settings=SETTINGS, dry_run=dry_run)  # type: ignore[arg-type]
    assert writes == len(objects.calls) == calls
    assert plan.counts == {"services": 1, "endpoint_slices": 1}


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(KubeConflict("conflict: create services"), id="conflict"),
        pytest.param(KubeNotFound("not found: namespaces cloudy"), id="not-found"),
        pytest.param(KubeError("HTTP 422: create services: invalid"), id="invalid"),
    ],
)
def test_a_conflict_not_found_or_invalid_is_skipped_not_raised(fault: Exception) -> None:
    objects = FakeObjects({("create", "syncthing"): fault})
    _, writes = bridge.import_pass(SYNC, VIEW, kube=objects, settings=SETTINGS)  # type: ignore[arg-type]
    assert writes == 1 and objects.calls == [("create", "EndpointSlice", "syncthing-p8384")]


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(KubeForbidden("forbidden: create services"), id="forbidden"),
        pytest.param(KubeUnavailable("unavailable: create services"), id="unavailable"),
    ],
)
def test_forbidden_or_unavailable_is_raised_for_the_runner(fault: Exception) -> None:
    objects = FakeObjects({("create", "syncthing"): fault})
    with pytest.raises(type(fault)):
        bridge.import_pass(SYNC, VIEW, kube=objects, settings=SETTINGS)  # type: ignore[arg-type]
    assert objects.calls == []


def imported_view() -> bridge.KubeView:
    plan, _ = bridge.import_pass(SYNC, VIEW, kube=None, settings=SETTINGS)
    services = {}
    slices = {}
    for write in plan.writes:
        assert write.body is not None
        key = f"{write.namespace}/{write.name}"
        if write.kind == "Service":
            services[key] = parse_service(write.body)
        else:
            slices[key] = parse_endpoint_slice(write.body)
    return bridge.KubeView(NODES, services, slices)


def test_second_pass_is_zero_writes_and_prune_deletes_all() -> None:
    view = imported_view()
    objects = FakeObjects()
    assert bridge.import_pass(SYNC, view, kube=objects, settings=SETTINGS)[1] == 0  # type: ignore[arg-type]
    _, writes = bridge.prune_imports(view, kube=objects, settings=SETTINGS)  # type: ignore[arg-type]
    assert objects.calls == [
        ("delete", "EndpointSlice", "syncthing-p8384"),
        ("delete", "Service", "syncthing"),
    ]
    assert writes == 2


def test_prune_on_a_partial_view_deletes_nothing() -> None:
    view = imported_view()
    partial = bridge.KubeView(view.nodes, view.services, view.slices, synced=False)
    objects = FakeObjects()
    plan, writes = bridge.prune_imports(partial, kube=objects, settings=SETTINGS)  # type: ignore[arg-type]
    assert writes == 0 and objects.calls == [] and plan.notes


def test_the_runner_records_status_and_gauges() -> None:
    clock = Clock()
    scheduler = Scheduler(("to-k8s", "to-serf", "imports"), quiet=0.2, max_wait=2, resync=60)
    metrics = Metrics()
    members = (*SYNC.members, publisher("x", "syncthing", "127.0.0.1"))
    serf = FakeSerf(members)
    serf.stats = lambda: {"agent": {"name": "serf-k1"}, "tags": {}}  # type: ignore[method-assign]
    runner = ImportRunner(serf, metrics=metrics, scheduler=scheduler, clock=clock)  # type: ignore[arg-type]
    assert not runner.enabled(Settings(node_name="k1"))
    runner.run(SETTINGS)  # no Kubernetes: planned (for status), nothing written
    assert runner.last_plan["skipped"] == {"ip": 1}
    assert runner.last_plan["services"] == 1  # planned even when nothing may be written
    assert runner.last_ok is None  # no synced view: not a sync
    text = generate_latest(metrics.registry).decode()
    assert 'serfbridge_import_skipped{reason="ip"} 1.0' in text
    assert 'serfbridge_imported{kind="services"} 1.0' in text
    assert "serfbridge_import_refused 0.0" in text


def svc(labels: dict[str, str]) -> ServiceInfo:
    port = ServicePort("http", 80, 30080, "TCP")
    return ServiceInfo("cloudy", "web", "u", "NodePort", (port,), None, labels, {}, ())


@pytest.mark.parametrize(
    ("labels", "skipped"),
    [
        pytest.param({f"{P}/imported-by": "lab"}, True, id="ours-imported"),
        pytest.param({f"{P}/imported-by": "far"}, True, id="another-clusters-import"),
        pytest.param({}, False, id="plain-service-published"),
    ],
)
def test_imported_services_never_reach_to_serf(labels: dict[str, str], skipped: bool) -> None:
    reason = maybe_skip_reason(svc(labels), PlanSettings(self_node="k1", cluster="lab"))
    assert (reason is not None) is skipped


@pytest.mark.parametrize(
    ("enabled", "directions"),
    [
        pytest.param(False, ("to-k8s", "to-serf"), id="off-no-imports-direction"),
        pytest.param(True, ("to-k8s", "to-serf", "imports"), id="on-imports-direction"),
    ],
)
def test_the_daemon_runs_imports_only_when_enabled(enabled: bool, directions: tuple) -> None:
    from serfbridge.daemon import Daemon

    d = Daemon(Settings(node_name="n1", import_services=enabled))
    d.scheduler.poke_all(urgent=True)
    assert d.scheduler.take_due().directions == directions
    status = d.status()["imports"]
    assert status == {
        "services": 0,
        "endpoint_slices": 0,
        "skipped": {},
        "refused": [],
        "writer": None,
    }
    assert ("imports" in d.ready()[1]) is enabled  # enabled: it must have passed once


@pytest.mark.parametrize(
    ("dry_run", "tail"),
    [
        pytest.param(True, [], id="dry-run"),
        pytest.param(False, ["import: 2 write(s) sent"], id="applied"),
    ],
)
def test_sync_prints_one_line_per_write(capsys, dry_run: bool, tail: list[str]) -> None:
    from serfbridge.cli.bridge import _print_import_plan

    plan, _ = bridge.import_pass(SYNC, VIEW, kube=None, settings=SETTINGS)
    _print_import_plan(plan, dry_run=dry_run, writes=2)
    assert capsys.readouterr().out.splitlines() == [
        "import: create Service cloudy/syncthing",
        "import: create EndpointSlice cloudy/syncthing-p8384",
        *tail,
    ]


@pytest.mark.parametrize(
    ("directions", "poked"),
    [
        pytest.param(("to-k8s", "to-serf", "imports"), True, id="imports-on-poked"),
        pytest.param(("to-k8s", "to-serf"), False, id="imports-off-no-error"),
    ],
)
def test_member_events_poke_the_imports_direction(directions: tuple, poked: bool) -> None:
    import threading

    from serfbridge.followers import SerfFollower
    from serfbridge.rpc.models import MemberEvent

    clock = Clock()
    scheduler = Scheduler(directions, quiet=0.0, max_wait=1, resync=60, clock=clock)
    follower = SerfFollower(
        FakeSerf(),  # type: ignore[arg-type]
        scheduler=scheduler,
        metrics=Metrics(),
        stopping=threading.Event(),
        self_member=lambda: "me",
        idle=lambda: 60.0,
    )
    follower._on_item(MemberEvent("member-update", (publisher("a", "syncthing", "192.0.2.1"),)))
    clock.now += 0.1
    assert ("imports" in scheduler.take_due().directions) is poked
