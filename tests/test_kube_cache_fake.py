"""KubeCache with a fake client (no apiserver): the write-through of our own patches."""

from __future__ import annotations

import threading

import pytest

from serfbridge.errors import KubeForbidden, KubeUnavailable
from serfbridge.kube_cache import KubeCache
from tests.fixtures_kube import ChangeLog, wait_until


def node_json(name: str, labels: dict, annotations: dict | None = None) -> dict:
    meta = {"name": name, "labels": labels, "annotations": annotations or {}}
    return {"metadata": {**meta, "resourceVersion": "2"}}


class FakeWatch:
    """A watch that yields the events it is given, then blocks until shut down."""

    def __init__(self, events: list[dict], ended: threading.Event) -> None:
        self.events, self.ended = events, ended

    def __iter__(self):
        yield from self.events
        self.ended.wait(10)

    def shutdown(self) -> None:
        self.ended.set()

    def close(self) -> None:
        self.ended.set()


class FakeKubeClient:
    """Lists ``nodes`` once; the nodes watch replays ``node_events`` when released."""

    def __init__(self, nodes: list[dict]) -> None:
        self.nodes, self.node_events = nodes, []
        self.release = threading.Event()
        self.closed = threading.Event()  # ends every watch, for teardown

    def request(self, method, path, *, verb, resource, **_):
        items = self.nodes if resource == "nodes" else []
        return {"metadata": {"resourceVersion": "1"}, "items": items}

    def watch(self, path, *, resource, resource_version, timeout):
        if resource == "nodes":
            self.release.wait(10)
            return FakeWatch(list(self.node_events), self.closed)
        return FakeWatch([], self.closed)


@pytest.fixture
def cache_and_client():
    client = FakeKubeClient([node_json("k1", {"hand": "set", "p/old": "1"})])
    log = ChangeLog()
    cache = KubeCache(client, on_change=log).start()
    assert cache.wait_synced(5)
    yield cache, client, log
    client.closed.set()
    client.release.set()
    cache.stop(timeout=2)


@pytest.mark.parametrize(
    ("labels", "annotations", "expected_labels", "expected_annotations"),
    [
        pytest.param({"p/new": "n"}, {}, {"hand": "set", "p/old": "1", "p/new": "n"}, {}, id="add"),
        pytest.param(
            {"p/old": None}, {"p/a": "x"}, {"hand": "set"}, {"p/a": "x"}, id="remove-and-annotate"
        ),
        pytest.param({"p/old": "2"}, {}, {"hand": "set", "p/old": "2"}, {}, id="change"),
    ],
)
def test_note_patched_merges_the_patch_and_bumps_version(
    cache_and_client, labels, annotations, expected_labels, expected_annotations
) -> None:
    cache, _, log = cache_and_client
    before = cache.version
    cache.note_patched("k1", labels=labels, annotations=annotations)
    node = cache.nodes()["k1"]
    assert (dict(node.labels), dict(node.annotations)) == (expected_labels, expected_annotations)
    assert cache.version > before
    assert log.for_key("nodes", "k1") == ["added", "modified"]


def test_the_watch_event_of_our_own_patch_changes_nothing_more(cache_and_client) -> None:
    """The event our PATCH causes arrives after the write-through: no second change."""
    cache, client, log = cache_and_client
    cache.note_patched("k1", labels={"p/new": "n"}, annotations={})
    version = cache.version
    ours = node_json("k1", {"hand": "set", "p/old": "1", "p/new": "n"})
    later = node_json("k2", {})  # events arrive in order: once k2 is in, ours was applied
    client.node_events = [{"type": "MODIFIED", "object": ours}, {"type": "ADDED", "object": later}]
    client.release.set()
    wait_until(lambda: "k2" in cache.nodes(), timeout=5, what="the watch events")
    assert log.for_key("nodes", "k1") == ["added", "modified"]  # the one modified is ours
    assert cache.version == version + 1  # only k2's arrival counted


def test_a_node_not_in_the_cache_is_left_alone(cache_and_client) -> None:
    cache, _, log = cache_and_client
    before = (cache.version, cache.nodes())
    cache.note_patched("nope", labels={"a": "b"}, annotations={})
    assert (cache.version, cache.nodes()) == before
    assert log.for_key("nodes", "nope") == []


@pytest.mark.parametrize(
    ("exc", "failures", "low", "high"),
    [
        pytest.param(KubeUnavailable("down"), 1, 0.375, 0.5, id="temporary-backs-off-from-short"),
        pytest.param(KubeUnavailable("down"), 9, 6.0, 8.0, id="temporary-capped-at-max"),
        pytest.param(KubeForbidden("rbac"), 1, 6.0, 8.0, id="forbidden-waits-the-longest"),
        pytest.param(RuntimeError("bug"), 1, 0.375, 0.5, id="a-bug-is-retried-as-before"),
    ],
)
def test_relist_delay_honours_the_retry_value(exc, failures, low, high) -> None:
    cache = KubeCache(FakeKubeClient([]), max_backoff=8.0)  # never started: no thread
    for _ in range(20):
        assert low <= cache._retry_delay(exc, failures) <= high
