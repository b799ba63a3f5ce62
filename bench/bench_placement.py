"""The publish planner's cost per pass: from scratch, first pass after a change, steady.

300 NodePort Services over 50 eligible Nodes (every member carrying Cloudy's ``serf``
self-entry, the typical names of ``bench_cloudy_capacity``), planned for one node with
the pure ``plan_publish``, as the daemon does on every pass:

* from scratch: every memo of the planner dropped first (``forget_memos``), which is
  what each pass cost before placement kept its answers by value;
* first pass after a change: one Service added, changed (its node port) or deleted, the
  memos kept from the pass before, so only what the change touches is computed again;
* steady: the same inputs once more;
* a new Service with priority 1 (placed before the 300, so it changes the start of every
  list it joins: the costliest kind of change), then gone again.

Each figure is the median of ``REPS`` changes; the goal is a first pass after a change
of at most 50 ms on the machine the bench runs on. Speed is reported, never asserted.

Run: ``.venv/bin/python -m bench.bench_placement``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from bench.bench_publish import model, service_body
from bench.bench_rpc_members import ms, print_table
from serfbridge.kube import parse_service
from serfbridge.kubemodels import ServiceInfo
from serfbridge.plan_publish import PublishPlan, PublishSettings, forget_memos, plan_publish

SERVICES = 300
NODES = 50
REPS = 15
GOAL = 0.050


def world(nodes: int = NODES, services: int = SERVICES) -> dict[str, Any]:
    """The planner's inputs: Nodes, alive members, Services (keyed ns/name)."""
    w = model(nodes, cluster="lab", prefix="k", ip=lambda i: f"10.91.{i // 250}.{i % 250 + 1}")
    w["services"] = {}
    for j in range(services):
        svc = parse_service(service_body(j))
        w["services"][f"{svc.namespace}/{svc.name}"] = svc
    return w


def planner(w: dict[str, Any]) -> Callable[[dict[str, ServiceInfo]], PublishPlan]:
    me = w["members"][0]
    settings = PublishSettings(self_node="k1", cluster="lab", self_member=me.name)

    def run(services: dict[str, ServiceInfo]) -> PublishPlan:
        return plan_publish(services=services, slices={}, nodes=w["nodes"], members=w["members"],
                            current_tags=me.tags, settings=settings)  # fmt: skip

    return run


def timed(run: Callable[[dict[str, ServiceInfo]], PublishPlan], services: Any) -> float:
    started = time.perf_counter()
    run(services)
    return time.perf_counter() - started


def changed(services: dict[str, ServiceInfo], i: int) -> dict[str, ServiceInfo]:
    """The i-th change: add a Service, move one's node port, or delete one (in turn)."""
    out = dict(services)
    keys = sorted(out)
    if i % 3 == 0:
        svc = parse_service(service_body(SERVICES + i))
        svc = replace(svc, name=f"new-{i}", uid=f"new-{i}")
        out[f"{svc.namespace}/{svc.name}"] = svc
    elif i % 3 == 1:
        key = keys[(37 * i) % len(keys)]
        port = out[key].ports[0]
        out[key] = replace(out[key], ports=(replace(port, node_port=32000 + i),))
    else:
        del out[keys[(53 * i) % len(keys)]]
    return out


def measure(reps: int = REPS, nodes: int = NODES) -> dict[str, list[float]]:
    """Seconds per pass: from scratch, first after a change, steady, first after a
    priority-1 Service (``reps`` each)."""
    w = world(nodes)
    run = planner(w)
    services = w["services"]
    figures: dict[str, list[float]] = {"scratch": [], "first": [], "steady": [], "front": []}
    for i in range(reps):
        forget_memos()
        figures["scratch"].append(timed(run, services))
        run(services)  # warm, as a daemon is after its first pass
        services = changed(services, i)
        figures["first"].append(timed(run, services))
        figures["steady"].append(timed(run, services))
        figures["front"].append(timed(run, {**services, **first_placed(i)}))
        run(services)  # and gone again
    return figures


def first_placed(i: int) -> dict[str, ServiceInfo]:
    """A new Service with priority 1: placed before all others, so every list it joins
    changes from its start (what ``bench_community`` creates)."""
    meta = {"name": f"lat-{i}", "namespace": "default",
            "annotations": {"serfbridge.io/priority": "1"}}  # fmt: skip
    spec = {"type": "NodePort", "ports": [{"port": 80, "nodePort": 31000 + i}]}
    svc = parse_service({"metadata": meta, "spec": spec})
    return {f"default/lat-{i}": svc}


def rows(figures: dict[str, list[float]]) -> list[list[str]]:
    scratch = statistics.median(figures["scratch"])
    names = {
        "scratch": "before: from scratch (every memo dropped)",
        "first": "after: first pass after a change",
        "steady": "after: steady pass (nothing changed)",
        "front": "after: first pass, a new priority-1 Service",
    }
    out = []
    for key, label in names.items():
        values = figures[key]
        median = statistics.median(values)
        out.append(
            [label, ms(median), ms(min(values)), ms(max(values)), f"{scratch / median:.1f}x"]
        )
    return out


def verdict(figures: dict[str, list[float]]) -> str:
    first = statistics.median(figures["first"])
    return f"{ms(first)} ms (goal <= {ms(GOAL)} ms): {'met' if first <= GOAL else 'NOT met'}"


def main() -> None:
    figures = measure()
    print_table(
        f"plan_publish for one node, {SERVICES} NodePort Services x {NODES} Nodes, {REPS} "
        "changes (add / node port / delete in turn); ratio = from-scratch median / median",
        ["pass", "median ms", "min ms", "max ms", "faster"],
        rows(figures),
    )
    print(f"  goal: first pass after a change, median {verdict(figures)}")


if __name__ == "__main__":
    main()
