"""Publishing Services into Serf: latency, capacity with replicas, daemon memory.

Issue 6's benchmark, one run:

* latency: from POSTing a NodePort Service to its entry being decoded (``decode_members``)
  on an agent that does not publish it (placement computed with ``rendezvous.rank``),
  polled every 10 ms, next to the floor measured in the same run and on the same
  cluster: a direct ``tags`` RPC on one agent until the tag is visible on another;
* capacity: the most Services published in full (every entry on its ``replicas`` = 2
  nodes, nothing left out for budget) by 1, 3, 6 and 12 nodes, each node already carrying
  Cloudy's ``serf`` self-entry, computed with the pure planner ``plan_publish``; the
  3-node figure is then checked once against real agents and daemons (nothing left out,
  every agent <= 512 B), and one Service more must be left out somewhere;
* memory: a daemon's VmRSS with 0 Services (3 Nodes), then with 300 Services and 50
  Nodes, after it is ready and after one resync.

Runs on one lab world (real kube-apiserver, 3 real serf agents, daemons with the product's
debounce). Speed is reported, never asserted. Needs ``serf`` and the lab apiserver.

Run: ``.venv/bin/python -m bench.bench_publish``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from bench.bench_cloudy_capacity import SERVICES
from bench.bench_rpc_members import ms, print_table
from serfbridge import rendezvous
from serfbridge.cloudy import (
    SERVICES_TAG,
    decode_members,
    decode_services,
    encode_services,
    make_entry,
    maybe_owner,
    owner_txt,
)
from serfbridge.kube import parse_node, parse_service
from serfbridge.plan_publish import PublishSettings, plan_publish
from serfbridge.rpc.budget import DEFAULT_TAG_LIMIT, encoded_tags_size
from serfbridge.rpc.client import SerfClient
from serfbridge.rpc.models import Member
from tests.lab.bridges import World, node_body

LATENCY_REPS = 10
POLL = 0.01
NODE_COUNTS = (1, 3, 6, 12)
REPLICAS = 2
RSS_SERVICES = 300
RSS_NODES = 50
#: The product's defaults (the lab's TUNING debounces faster); resync stays at the lab's
#: 10 s so "after a resync" comes quickly.
PRODUCT_LOOP = ("--debounce", "0.2", "--max-wait", "2")
LAB = "lab"
RESYNC = 10.0  # the lab TUNING's --resync


# --- inputs shared by the planner model and the real cluster ---------------------------


def service_body(j: int) -> dict[str, Any]:
    """The j-th typical NodePort Service (names from bench_cloudy_capacity, node port fixed)."""
    namespace, name = SERVICES[j % len(SERVICES)]
    name = name if j < len(SERVICES) else f"{name}-{j // len(SERVICES) + 1}"
    port = {"name": "http", "port": 80, "nodePort": 30000 + (37 * j) % 2768, "protocol": "TCP"}
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "NodePort", "ports": [port]},
    }


def self_entry_tag(node: str, ip: str, cluster: str) -> str:
    """Cloudy's own ``serf`` entry, as its avahi-service cron keeps it in ``services``."""
    entry = make_entry(
        description="SERF instance running",
        type="serf",
        port=5000,
        host=f"{node}.guifi.local",
        ip=ip,
        microcloud=cluster,
    )
    return encode_services([entry])


# --- capacity, with the pure planner ----------------------------------------------------


def model(nodes: int, *, cluster: str, prefix: str, ip: Callable[[int], str]) -> dict[str, Any]:
    """Synthetic Nodes and alive members (``k8s`` tag + serf self-entry) for ``nodes``."""
    names = [f"{prefix}{i + 1}" for i in range(nodes)]
    node_infos = {n: parse_node(node_body(n, ip(i))) for i, n in enumerate(names)}
    members = [
        Member(
            name=f"serf-{n}",
            addr=ip(i),
            port=7946,
            tags={"k8s": f"{cluster}/{n}", SERVICES_TAG: self_entry_tag(n, ip(i), cluster)},
            status="alive",
        )
        for i, n in enumerate(names)
    ]
    return {"nodes": node_infos, "members": members, "cluster": cluster}


@dataclass(frozen=True)
class Tally:
    """What every node's plan does with ``count`` Services."""

    count: int
    left_out: int  # entries left out for budget, all nodes together
    per_node: tuple[int, ...]  # our entries per node
    biggest: int  # the largest tag set, bytes
    invisible: int  # Services with no copy published at all


def plan_all(world: Mapping[str, Any], count: int) -> Tally:
    services = {}
    for j in range(count):
        svc = parse_service(service_body(j))
        services[f"{svc.namespace}/{svc.name}"] = svc
    left, per_node, biggest, copies = 0, [], 0, dict.fromkeys(services, 0)
    for member in world["members"]:
        node = member.name.removeprefix("serf-")
        plan = plan_publish(
            services=services,
            slices={},
            nodes=world["nodes"],
            members=world["members"],
            current_tags=member.tags,
            settings=PublishSettings(
                self_node=node,
                cluster=world["cluster"],
                self_member=member.name,
                # One node publishing alone (as avahi-ps does) can only hold one copy.
                replicas=min(REPLICAS, len(world["members"])),
            ),
        )
        left += sum(1 for lo in plan.left_out if lo.reason.startswith("budget"))
        per_node.append(len(plan.entries))
        biggest = max(biggest, plan.budget_used)
        for entry in plan.entries:
            owner = maybe_owner(entry)
            assert owner is not None
            copies[f"{owner[1]}/{owner[2]}"] += 1
    invisible = sum(1 for c in copies.values() if c == 0)
    return Tally(count, left, tuple(per_node), biggest, invisible)


def capacity(world: Mapping[str, Any]) -> tuple[Tally, Tally]:
    """Add one Service at a time: (the last tally with nothing left out, the last with
    every Service published at least once)."""
    full = visible = plan_all(world, 0)
    for count in range(1, 2000):
        tally = plan_all(world, count)
        if tally.invisible:
            return full, visible
        visible = tally
        if not tally.left_out and full.count == count - 1:
            full = tally
    raise RuntimeError("capacity search did not end")


def cloudy_model(nodes: int) -> dict[str, Any]:
    return model(nodes, cluster="cloudy-k8s", prefix="k8s-node", ip=lambda i: f"10.139.40.{51 + i}")


def lab_model(nodes: int) -> dict[str, Any]:
    """The real lab world as the planner sees it: cluster ``lab``, members on 127.0.0.1."""
    return model(nodes, cluster=LAB, prefix="k", ip=lambda i: "127.0.0.1")


def capacity_rows() -> list[list[str]]:
    rows, single = [], 0
    for nodes in NODE_COUNTS:
        full, visible = capacity(cloudy_model(nodes))
        single = single or full.count
        rows.append(
            [
                f"{nodes} node(s)" + (" (publishing alone, as avahi-ps)" if nodes == 1 else ""),
                str(full.count),
                f"{full.count / single:.1f}x",
                f"{min(full.per_node)}-{max(full.per_node)}",
                str(full.biggest),
                str(visible.count),
                str(sum(visible.per_node)),
            ]
        )
    return rows


# --- the real cluster ---------------------------------------------------------------------


def post(w: World, path: str, resource: str, body: dict[str, Any], ns: str | None = None) -> None:
    w.client.request("POST", path, verb="create", resource=resource, namespace=ns, body=body)


def create_service(w: World, body: dict[str, Any]) -> None:
    ns = body["metadata"]["namespace"]
    post(w, f"/api/v1/namespaces/{ns}/services", "services", body, ns)


def delete_service(w: World, ns: str, name: str) -> None:
    w.client.request("DELETE", f"/api/v1/namespaces/{ns}/services/{name}", verb="delete",
                     resource="services", namespace=ns)  # fmt: skip


def prepare(w: World) -> None:
    """Cloudy's self-entry on every agent, and the namespaces the typical Services use."""
    for node in w.nodes:
        with SerfClient(w.agent_for(node).rpc_addr) as serf:
            serf.tags({SERVICES_TAG: self_entry_tag(node, "127.0.0.1", LAB)})
    for ns in sorted({ns for ns, _ in SERVICES} - {"default", "kube-system"}):
        post(w, "/api/v1/namespaces", "namespaces", {"metadata": {"name": ns}})


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(POLL)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def floor_once(w: World, i: int) -> float:
    """A direct ``tags`` RPC on k1 until k2's ``members`` shows it."""
    writer, observer = w.agent_for(w.nodes[0]), w.agent_for(w.nodes[1])
    with SerfClient(writer.rpc_addr) as src, SerfClient(observer.rpc_addr) as dst:
        started = time.perf_counter()
        src.tags({"bench-floor": str(i)})

        def seen() -> bool:
            return any(
                m.name == writer.name and m.tags.get("bench-floor") == str(i) for m in dst.members()
            )

        wait_until(seen, 15, "the floor tag")
        return time.perf_counter() - started


def service_once(w: World, i: int) -> float:
    """POST a NodePort Service until a non-publishing agent decodes its entry."""
    name = f"lat-{i}"
    publishers = rendezvous.rank(f"{LAB}/default/{name}/80", w.nodes)[:REPLICAS]
    observer = next(n for n in w.nodes if n not in publishers)
    txt = owner_txt(cluster=LAB, namespace="default", service=name, port=80)
    body = {"metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}]}}  # fmt: skip
    with SerfClient(w.agent_for(observer).rpc_addr) as serf:

        def seen() -> bool:
            return any(row.get("t") == txt for row in decode_members(serf.members())[0])

        started = time.perf_counter()
        create_service(w, body)
        wait_until(seen, 15, f"{name} on {observer}")
        elapsed = time.perf_counter() - started
        delete_service(w, "default", name)
        wait_until(lambda: not seen(), 15, f"{name} gone from {observer}")
    return elapsed


def latency(w: World) -> tuple[list[float], list[float]]:
    floors, services = [], []
    for i in range(LATENCY_REPS):
        floors.append(floor_once(w, i))
        services.append(service_once(w, i))
        time.sleep(0.3)  # let the delete's own republish settle
    with SerfClient(w.agent_for(w.nodes[0]).rpc_addr) as serf:
        serf.tags(delete=["bench-floor"])
    return floors, services


def published_entries(w: World) -> tuple[dict[str, int], dict[str, int]]:
    """(our entries per Service owner txt, tag bytes per member) as agent k1 sees them."""
    with SerfClient(w.agent_for(w.nodes[0]).rpc_addr) as serf:
        members = serf.members()
    counts: dict[str, int] = {}
    for m in members:
        entries = decode_services(m.tags[SERVICES_TAG]) if SERVICES_TAG in m.tags else []
        for entry in entries:
            if entry.txt.startswith("k8s="):
                counts[entry.txt] = counts.get(entry.txt, 0) + 1
    return counts, {m.name: encoded_tags_size(m.tags) for m in members}


def left_out(w: World) -> list[Any]:
    return [lo for b in w.bridges.values() for lo in b.status().get("left_out", [])]


def confirm_capacity(w: World, count: int) -> list[str]:
    """Create ``count`` Services on the real 3-node cluster; then one more."""
    for j in range(count):
        create_service(w, service_body(j))

    def settled() -> tuple[dict[str, int], dict[str, int]] | None:
        counts, sizes = published_entries(w)
        full = len(counts) == count and all(c == REPLICAS for c in counts.values())
        return (counts, sizes) if full and not left_out(w) else None

    _, sizes = wait_until(settled, 60, f"{count} Services published {REPLICAS}x")
    over = {name: size for name, size in sizes.items() if size > DEFAULT_TAG_LIMIT}
    notes = [
        f"real 3-node cluster, {count} Services: all published {REPLICAS}x, nothing left out; "
        f"tag bytes per agent {sorted(sizes.values())} (limit {DEFAULT_TAG_LIMIT}): "
        + ("all within" if not over else f"OVER on {over}")
    ]
    create_service(w, service_body(count))
    reasons = wait_until(lambda: [lo["reason"] for lo in left_out(w)], 30, "a left-out entry")
    notes.append(
        f"one Service more ({count + 1}): left out on {len(reasons)} node(s): {reasons[0]}"
    )
    return notes


# --- memory -------------------------------------------------------------------------------


def rss_mib(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def wait_resync(bridge: Any) -> None:
    """Past the lab's 10 s resync, then until a to-k8s pass has finished since."""
    time.sleep(RESYNC + 1)
    since = time.time() - 1
    wait_until(lambda: bridge.status().get("last_sync", {}).get("to-k8s", 0) > since,
               30, "a pass after the resync")  # fmt: skip


def measure_rss(w: World) -> tuple[float, float, float, float]:
    """Start k1's daemon afresh; (ready s, RSS ready, RSS after resync, peak) in MiB."""
    bridge = w.bridges[w.nodes[0]]
    bridge.kill()
    started = time.perf_counter()
    bridge.start().wait_ready(120)
    ready_s = time.perf_counter() - started
    assert bridge.proc is not None
    ready = rss_mib(bridge.proc.pid)[0]
    wait_resync(bridge)
    after, peak = rss_mib(bridge.proc.pid)
    return ready_s, ready, after, peak


def grow(w: World, *, nodes: int, services: int, have: int) -> None:
    def node(i: int) -> None:
        w.create_node(f"x{i}", f"10.91.{i // 250}.{i % 250}")

    def service(j: int) -> None:
        create_service(w, {"metadata": {"name": f"rss-{j}", "namespace": "default"},
                           "spec": {"type": "NodePort", "ports": [{"port": 80}]}})  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(node, range(nodes - len(w.nodes))))
        list(pool.map(service, range(services - have)))


def main() -> None:
    began = time.monotonic()
    print("capacity with the pure planner ...", flush=True)
    cap_rows = capacity_rows()
    lab_count = capacity(lab_model(3))[0].count
    print("starting the lab world: apiserver + 3 serf agents + 3 daemons ...", flush=True)
    with World(3) as w:
        prepare(w)
        w.start_bridges(args=PRODUCT_LOOP)
        idle = measure_rss(w)
        floors, services = latency(w)
        notes = confirm_capacity(w, lab_count)
        grow(w, nodes=RSS_NODES, services=RSS_SERVICES, have=lab_count + 1)
        loaded = measure_rss(w)

    floor, svc = statistics.median(floors), statistics.median(services)
    print_table(
        f"Service created -> entry decoded on a non-publishing agent, {LATENCY_REPS} reps, "
        "polled every 10 ms (ratio = median / floor median)",
        ["path", "median ms", "min ms", "max ms", "vs floor"],
        [
            ["floor: `tags` RPC on k1 -> visible on k2", ms(floor), ms(min(floors)),
             ms(max(floors)), "1.00x"],
            ["POST NodePort Service -> decoded elsewhere", ms(svc), ms(min(services)),
             ms(max(services)), f"{svc / floor:.2f}x"],
        ],
    )  # fmt: skip
    verdict = "met" if svc - floor <= 0.3 else "NOT met"
    print(f"  goal: median minus floor = {ms(svc - floor)} ms (goal <= 300 ms): {verdict}")
    print(
        "  note: the floor has one writer; the Service is written by its 2 publishers, and "
        "the observer sees whichever gossip arrives first (daemon debounce 0.2 s, the default)"
    )
    print_table(
        f"capacity: Services published in full (replicas {REPLICAS}, {DEFAULT_TAG_LIMIT} B tag "
        "limit, serf self-entry on every node), pure planner, typical names",
        ["cluster", "in full", "vs 1 node", "ours/node", "max tag B", "each >= 1x", "entries then"],
        cap_rows,
    )
    print(
        "  'in full': most Services with every entry on its 2 nodes and nothing left out; "
        "'each >= 1x': most Services before one has no copy at all (entries then = all "
        "nodes' entries at that point)"
    )
    print(f"  planner figure for the lab's own names (cluster {LAB!r}, 3 nodes): {lab_count}")
    for note in notes:
        print(f"  check: {note}")
    print_table(
        "daemon memory (k1's daemon restarted; VmRSS from /proc/<pid>/status)",
        ["state", "ready after s", "RSS ready MiB", "RSS after resync MiB", "peak MiB"],
        [
            ["idle: 0 Services, 3 Nodes", f"{idle[0]:.1f}", *(f"{v:.1f}" for v in idle[1:])],
            [f"{RSS_SERVICES} Services, {RSS_NODES} Nodes", f"{loaded[0]:.1f}",
             *(f"{v:.1f}" for v in loaded[1:])],
        ],
    )  # fmt: skip
    print(f"\ntotal wall time {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
