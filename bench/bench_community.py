"""Community scale: 40 serf agents, 12 of them Kubernetes Nodes with a daemon, 300 Services.

Issue 14's benchmark, one run, on loopback (every agent at 127.0.0.1):

* a real kube-apiserver, 40 real serf agents (each carrying Cloudy's ``serf`` self-entry;
  28 of them are plain Cloudy nodes), 12 Nodes each with its ``serfbridge run`` at the
  product's debounce, then 300 NodePort Services (most cannot fit: 12 nodes x 512 B);
* latency: from creating a Service (priority 1, so it is placed before the 300) to its
  entry on 2 members, as a Cloudy agent's ``members`` shows it, polled every 20 ms;
* writes per Service change, from the daemons' ``/metrics``: ``tags`` calls and Node
  patches (all 12 daemons together) from the create (or delete) until nothing is written
  for 3 s;
* CPU per pass, from ``serfbridge_pass_cpu_seconds_total / serfbridge_passes_total``;
* the pure planner at 300 Services x 50 Nodes (``bench_placement``);
* RSS per daemon (VmRSS);
* a partition: SIGSTOP 8 of the 40 agents (3 of them Nodes) until the others declare them
  failed and the daemons are quiet again, then SIGCONT: the time until every Node is
  labelled ``alive`` again and the placement is back to the one before the partition
  (every port on the same 2 nodes; a port the budgets left on 1 node, on that one).

Everything it starts is stopped by the lab's context managers, also on failure.
Speed is reported, never asserted. Needs ``serf`` and the lab apiserver.

Run: ``.venv/bin/python -m bench.bench_community``.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench import bench_placement
from bench.bench_cloudy_capacity import SERVICES as TYPICAL
from bench.bench_publish import (
    LAB,
    PRODUCT_LOOP,
    create_service,
    delete_service,
    post,
    rss_mib,
    self_entry_tag,
    service_body,
)
from bench.bench_rpc_members import ms, print_table
from serfbridge.cloudy import SERVICES_TAG, decode_services_report, owner_txt
from serfbridge.errors import SerfBridgeError
from serfbridge.rpc.client import SerfClient
from tests.lab.bridges import World
from tests.lab.serfagents import AgentSpec

AGENTS = 40
NODES = 12
SERVICES = 300
REPLICAS = 2
LATENCY_REPS = 7
STOPPED_NODES = ("k10", "k11", "k12")
STOPPED_CLOUDY = 5
POLL = 0.02
QUIET = 3.0
STATUS = "serfbridge.io/serf-status"


def specs() -> list[AgentSpec]:
    names = [f"serf-k{i + 1}" for i in range(NODES)]
    names += [f"cloudy{i + 1}" for i in range(AGENTS - NODES)]
    return [
        AgentSpec(n, tags={SERVICES_TAG: self_entry_tag(n, "127.0.0.1", "guifi")}) for n in names
    ]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(POLL)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


# --- what the gossip and the daemons show ------------------------------------------------


def placement_seen(serf: SerfClient) -> dict[str, frozenset[str]]:
    """Owner txt -> the alive members publishing it, as one agent's ``members`` shows."""
    where: dict[str, set[str]] = {}
    for m in serf.members():
        if m.status != "alive" or SERVICES_TAG not in m.tags:
            continue
        try:
            entries = decode_services_report(m.tags[SERVICES_TAG]).entries
        except SerfBridgeError:
            continue
        for entry in entries:
            if entry.txt.startswith("k8s="):
                where.setdefault(entry.txt, set()).add(m.name)
    return {txt: frozenset(names) for txt, names in where.items()}


def metric(text: str, name: str, direction: str) -> float:
    found = re.search(rf'{name}\{{direction="{direction}"\}} ([0-9.e+-]+)', text)
    return float(found[1]) if found else 0.0


def scrape(w: World) -> dict[str, dict[str, float]]:
    """Per daemon: writes, passes and pass CPU for both directions."""
    out = {}
    for node, bridge in w.bridges.items():
        text = bridge.get("/metrics")[1]
        out[node] = {
            f"{key}:{d}": metric(text, f"serfbridge_{key}_total", d)
            for key in ("writes", "passes", "pass_cpu_seconds")
            for d in ("to-serf", "to-k8s")
        }
    return out


def writes(w: World) -> tuple[float, float]:
    figures = scrape(w).values()
    return sum(f["writes:to-serf"] for f in figures), sum(f["writes:to-k8s"] for f in figures)


def settle(w: World, timeout: float = 60.0) -> tuple[float, float]:
    """Wait until no daemon has written for ``QUIET`` s; the write totals then."""
    last, since, deadline = writes(w), time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = writes(w)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= QUIET:
            return now
    return last


def statuses(w: World) -> dict[str, str]:
    return {n: w.client.get_node(n).labels.get(STATUS, "") for n in w.nodes}


# --- the phases ----------------------------------------------------------------------------


def load(w: World) -> None:
    for ns in sorted({ns for ns, _ in TYPICAL} - {"default", "kube-system"}):
        post(w, "/api/v1/namespaces", "namespaces", {"metadata": {"name": ns}})
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda j: create_service(w, service_body(j)), range(SERVICES)))


def latency_once(w: World, serf: SerfClient, i: int) -> tuple[float, tuple[float, ...]]:
    """Seconds to 2 copies, and the writes (tags, patches) of the create and the delete."""
    name = f"lat-{i}"
    txt = owner_txt(cluster=LAB, namespace="default", service=name, port=80)
    body = {"metadata": {"name": name, "namespace": "default",
                         "annotations": {"serfbridge.io/priority": "1"}},
            "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}]}}  # fmt: skip
    before = settle(w)
    started = time.perf_counter()
    create_service(w, body)
    wait_until(lambda: len(placement_seen(serf).get(txt, ())) >= REPLICAS, 60, f"{name} 2x")
    elapsed = time.perf_counter() - started
    created = settle(w)
    delete_service(w, "default", name)
    wait_until(lambda: txt not in placement_seen(serf), 60, f"{name} gone")
    deleted = settle(w)
    return elapsed, (created[0] - before[0], created[1] - before[1],
                     deleted[0] - created[0], deleted[1] - created[1])  # fmt: skip


def converged(w: World, serf: SerfClient, wanted: dict[str, frozenset[str]]) -> bool:
    seen = placement_seen(serf)
    return seen == wanted and all(s == "alive" for s in statuses(w).values())


def partition(w: World, serf: SerfClient) -> dict[str, float]:
    """SIGSTOP a minority, wait for the verdict and the re-placement, SIGCONT, time it."""
    wanted = placement_seen(serf)
    stopped = [w.agent_for(n) for n in STOPPED_NODES]
    stopped += [a for a in w.serf.agents if a.name.startswith("cloudy")][:STOPPED_CLOUDY]
    names = {a.name for a in stopped}
    began = time.perf_counter()
    for agent in stopped:
        agent.stop()
    try:
        wait_until(lambda: {m.name for m in serf.members() if m.status == "failed"} >= names,
                   120, "the stopped agents failed")  # fmt: skip
        failed_s = time.perf_counter() - began
        wait_until(lambda: all(statuses(w)[n] == "failed" for n in STOPPED_NODES), 60,
                   "their Nodes labelled failed")  # fmt: skip
        labelled_s = time.perf_counter() - began
        settle(w)
        replaced_s = time.perf_counter() - began
        moved = placement_seen(serf)
    finally:
        healed = time.perf_counter()
        for agent in stopped:
            agent.cont()
    wait_until(lambda: converged(w, serf, wanted), 180, "convergence after the heal")
    return {"failed": failed_s, "labelled": labelled_s, "replaced": replaced_s,
            "during": _counts(moved), "heal": time.perf_counter() - healed,
            "stopped": float(len(stopped))}  # fmt: skip


def _counts(seen: dict[str, frozenset[str]]) -> str:
    """'N ports 2x, M 1x' for a placement."""
    by = sorted({len(p) for p in seen.values()}, reverse=True)
    return ", ".join(f"{sum(1 for p in seen.values() if len(p) == k)} ports {k}x" for k in by)


def run_world() -> dict[str, Any]:
    w = World(agent_specs=specs())
    w.nodes = w.nodes[:NODES]  # only the first 12 agents are Kubernetes Nodes
    out: dict[str, Any] = {}
    with w:
        started = time.perf_counter()
        w.start_bridges(args=PRODUCT_LOOP)
        out["ready"] = time.perf_counter() - started
        load(w)
        observer = w.serf.agents[-1]  # a plain Cloudy node, never stopped
        with SerfClient(observer.rpc_addr) as serf:
            settle(w, timeout=300)
            out["loaded"] = wait_until(lambda: _stable(serf), 120, "a stable placement")
            out["load_s"] = time.perf_counter() - started
            out["rss"] = [rss_mib(b.proc.pid)[0] for b in w.bridges.values() if b.proc]
            first = scrape(w)
            out["latency"] = [latency_once(w, serf, i) for i in range(LATENCY_REPS)]
            out["passes"] = (first, scrape(w))
            out["partition"] = partition(w, serf)
    return out


def _stable(serf: SerfClient) -> dict[str, frozenset[str]] | None:
    """The placement, once two reads ``QUIET`` s apart agree."""
    before = placement_seen(serf)
    time.sleep(QUIET)
    after = placement_seen(serf)
    return after if after == before and after else None


def cpu_rows(
    first: dict[str, dict[str, float]], last: dict[str, dict[str, float]]
) -> list[list[str]]:
    rows = []
    for d in ("to-serf", "to-k8s"):
        per = []
        for node in last:
            passes = last[node][f"passes:{d}"] - first[node][f"passes:{d}"]
            cpu = last[node][f"pass_cpu_seconds:{d}"] - first[node][f"pass_cpu_seconds:{d}"]
            if passes:
                per.append(cpu / passes)
        total = sum(last[n][f"passes:{d}"] - first[n][f"passes:{d}"] for n in last)
        rows.append([d, f"{total:.0f}", ms(statistics.median(per)) if per else "-",
                     ms(max(per)) if per else "-"])  # fmt: skip
    return rows


def report(
    out: dict[str, Any], planner: dict[str, list[float]], planner12: dict[str, list[float]]
) -> None:
    print(f"\n{AGENTS} agents, {NODES} Nodes with a daemon each, {SERVICES} NodePort Services: "
          f"placed within the {NODES} nodes' 512 B budgets as {_counts(out['loaded'])}, the rest "
          f"left out (by priority, then name); daemons ready {out['ready']:.1f} s after "
          f"the lab, placement stable {out['load_s']:.1f} s after that")  # fmt: skip
    lat = [x[0] for x in out["latency"]]
    w = [x[1] for x in out["latency"]]
    print_table(
        f"Service created (priority 1) -> its entry on 2 members, {LATENCY_REPS} reps",
        ["figure", "median", "min", "max"],
        [["latency ms", ms(statistics.median(lat)), ms(min(lat)), ms(max(lat))],
         *[[label, f"{statistics.median(col):.0f}", f"{min(col):.0f}", f"{max(col):.0f}"]
           for label, col in zip(("create: tags calls", "create: Node patches",
                                  "delete: tags calls", "delete: Node patches"),
                                 zip(*w, strict=True), strict=True)]],
    )  # fmt: skip
    print_table("daemons' CPU per pass, over the latency phase (own thread's CPU / passes)",
                ["direction", f"passes ({NODES} daemons)", "median ms/pass", "max ms/pass"],
                cpu_rows(*out["passes"]))  # fmt: skip
    print_table(
        f"pure planner, {bench_placement.SERVICES} Services x {bench_placement.NODES} Nodes, "
        "one node's plan_publish",
        ["pass", "median ms", "min ms", "max ms", "faster"],
        bench_placement.rows(planner),
    )
    print(f"  goal: first pass after a change, median {bench_placement.verdict(planner)}")
    print_table(
        f"pure planner, {bench_placement.SERVICES} Services x {NODES} Nodes (this lab's "
        "size: every node full, so every port is tried on 6 nodes)",
        ["pass", "median ms", "min ms", "max ms", "faster"],
        bench_placement.rows(planner12),
    )
    rss = out["rss"]
    print(f"\nRSS per daemon (VmRSS, MiB, {len(rss)} daemons, loaded and quiet): median "
          f"{statistics.median(rss):.1f}, min {min(rss):.1f}, max {max(rss):.1f}")  # fmt: skip
    p = out["partition"]
    print_table(
        f"partition: SIGSTOP {p['stopped']:.0f} of {AGENTS} agents ({len(STOPPED_NODES)} Nodes), "
        "then SIGCONT (seconds from the SIGSTOP, then from the SIGCONT)",
        ["step", "s"],
        [["all stopped agents failed on the observer", f"{p['failed']:.1f}"],
         [f"their {len(STOPPED_NODES)} Nodes labelled failed", f"{p['labelled']:.1f}"],
         [f"daemons quiet again for {QUIET:.0f} s (placement then: {p['during']})",
          f"{p['replaced']:.1f}"],
         ["after SIGCONT: all Nodes alive, placement back to the one before", f"{p['heal']:.1f}"]],
    )  # fmt: skip


def main() -> None:
    began = time.monotonic()
    print("pure planner, 300 Services x 50 Nodes ...", flush=True)
    planner = bench_placement.measure()
    planner12 = bench_placement.measure(nodes=NODES)
    print(f"starting the lab: apiserver + {AGENTS} serf agents + {NODES} daemons ...", flush=True)
    out = run_world()
    report(out, planner, planner12)
    print(f"\ntotal wall time {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
