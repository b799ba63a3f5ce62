"""Benchmark of the Kubernetes adapter against the real apiserver (tests.lab).

Measures, with 200 Nodes and 200 then 2,000 Services: KubeCache memory (tracemalloc
delta of the synced cache) and time from start() to the first ``synced``; and the API
requests one Node label change costs with a synced cache (target: one PATCH).
Run: ``.venv/bin/python -m bench.bench_kube``. Prints a table; asserts nothing.
"""

from __future__ import annotations

import gc
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

from serfbridge import kube
from serfbridge.kube_cache import KubeCache
from tests.lab.apiserver import LabApiServer

NODES = 200
SERVICE_STEPS = (200, 2000)


def create_nodes(client: kube.KubeClient, count: int) -> None:
    def one(i: int) -> None:
        address = {"type": "InternalIP", "address": f"10.0.{i // 250}.{i % 250}"}
        body = {"metadata": {"name": f"bench-node-{i}", "labels": {"zone": f"z{i % 4}"}},
                "status": {"addresses": [address],
                           "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip
        client.request("POST", "/api/v1/nodes", verb="create", resource="nodes", body=body)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(count)))


def create_services(client: kube.KubeClient, start: int, stop: int) -> None:
    def one(i: int) -> None:
        body = {"metadata": {"name": f"bench-svc-{i}",
                             "annotations": {"serfbridge.io/publish": "true"}},
                "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}]}}  # fmt: skip
        client.request("POST", "/api/v1/namespaces/default/services", verb="create",
                       resource="services", namespace="default", body=body)  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(start, stop)))


def measure_cache(client: kube.KubeClient) -> tuple[float, float, int]:
    """(seconds to first synced, cache MiB, objects cached) for a fresh cache."""
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    began = time.monotonic()
    cache = KubeCache(client).start()
    if not cache.wait_synced(120):
        raise RuntimeError("cache did not sync")
    elapsed = time.monotonic() - began
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    objects = len(cache.nodes()) + len(cache.services()) + len(cache.endpoint_slices())
    cache.stop()
    tracemalloc.stop()
    return elapsed, used / 2**20, objects


def requests_per_label_change(client: kube.KubeClient, changes: int = 20) -> float:
    cache = KubeCache(client).start()
    cache.wait_synced(60)
    before = sum(client.request_counts().values())
    for i in range(changes):
        client.patch_node(f"bench-node-{i}", labels={"serfbridge.io/bench": "1"})
    sent = sum(client.request_counts().values()) - before
    cache.stop()
    return sent / changes


def main() -> None:
    print("starting etcd + kube-apiserver ...", flush=True)
    with LabApiServer() as lab:
        client = kube.load_client(str(lab.kubeconfig), env={})
        create_nodes(client, NODES)
        rows, made = [], 0
        for services in SERVICE_STEPS:
            create_services(client, made, services)
            made = services
            rows.append((NODES, services, *measure_cache(client)))
        per_change = requests_per_label_change(client)
        client.close()
    print(f"\n{'nodes':>6} {'services':>9} {'objects':>8} {'first synced s':>15} {'cache MiB':>10}")
    for nodes, services, seconds, mib, objects in rows:
        print(f"{nodes:>6} {services:>9} {objects:>8} {seconds:>15.2f} {mib:>10.2f}")
    (_, s1, t1, m1, _), (_, s2, t2, m2, _) = rows
    print(f"\n{s2 // s1}x services -> time x{t2 / t1:.1f}, memory x{m2 / m1:.1f}")
    print(f"API requests per Node label change (synced cache): {per_change:.2f} (target 1 PATCH)")


if __name__ == "__main__":
    main()
