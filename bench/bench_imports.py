"""Importing the gossip into Kubernetes (issue 15): how long a change takes to reach the API.

One run, side by side:

* floor: a ``tags`` RPC on a plain publisher agent until another agent's ``members``
  shows the new tag: what the gossip itself costs;
* import: a ``tags`` RPC on the same publisher that moves its ``syncthing`` entry to a new
  IP, until the EndpointSlice in the API holds that IP (GET every 10 ms); the writes the
  apiserver served for it (``apiserver_request_total``) are counted per change.

Floor and import alternate, so both see the same load. Runs on one lab world (real
kube-apiserver, 3 serf agents with 3 daemons at the product's debounce, 1 publisher).
Speed is reported as a ratio to the floor, never asserted. Needs ``serf`` and the lab
apiserver (``make deps kube-apiserver``).

Run: ``.venv/bin/python -m bench.bench_imports`` (or ``make bench-imports``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

from bench.bench_rpc_members import ms, print_table
from serfbridge.errors import KubeError
from tests.lab.bridges import World
from tests.lab.import_model import entry
from tests.lab.imports import (
    apiserver_writes,
    ensure_namespace,
    import_args,
    publish,
    slices_base,
)
from tests.lab.serfagents import AgentSpec, SerfAgent, raw_request

REPS = 10
POLL = 0.01
NS = "cloudy"
PORT = 22000
SLICE = f"syncthing-p{PORT}"
#: The product's loop (the lab's TUNING debounces faster); resync as the lab's.
PRODUCT_LOOP = ("--debounce", "0.2", "--max-wait", "2")


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if predicate():
            return
        time.sleep(POLL)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def floor_once(publisher: SerfAgent, observer: SerfAgent, i: int) -> float:
    """A ``tags`` RPC on the publisher until the observer's ``members`` shows it."""
    started = time.perf_counter()
    error, _ = raw_request(
        publisher.rpc_addr, "tags", body={"Tags": {"bench-floor": str(i)}, "DeleteTags": []}
    )
    if error:
        raise RuntimeError(f"tags: {error}")

    def seen() -> bool:
        return any(
            m["Name"] == publisher.name and (m.get("Tags") or {}).get("bench-floor") == str(i)
            for m in observer.members()
        )

    wait_until(seen, 15, "the floor tag")
    return time.perf_counter() - started


def slice_ips(w: World, base: str) -> list[str]:
    path = f"{base}/namespaces/{NS}/endpointslices/{SLICE}"
    try:
        item = w.client.request("GET", path, verb="get", resource="endpointslices", namespace=NS)
    except KubeError:  # not there yet (404) counts as "not yet"
        return []
    return [a for e in item.get("endpoints") or () for a in e.get("addresses") or ()]


def import_once(w: World, publisher: SerfAgent, base: str, i: int) -> tuple[float, int]:
    """Move the publisher's entry to a new IP; seconds until the slice shows it, and the
    Service/EndpointSlice writes the apiserver served meanwhile."""
    ip = f"10.77.9.{i + 10}"
    writes = apiserver_writes(w.apiserver)
    started = time.perf_counter()
    publish(publisher, [entry("syncthing", PORT, ip, member=publisher.name)])
    wait_until(lambda: slice_ips(w, base) == [ip], 30, f"{SLICE} holding {ip}")
    elapsed = time.perf_counter() - started
    time.sleep(1.0)  # the writer's later passes: counted against this change too
    return elapsed, apiserver_writes(w.apiserver) - writes


def main() -> None:
    began = time.monotonic()
    print("starting the lab world: apiserver + 3 serf agents + 3 daemons + 1 publisher ...")
    with World(3) as w:
        ensure_namespace(w.client, NS)
        publisher = w.serf.add_agent(AgentSpec("pub-bench"))
        observer = w.agent_for(w.nodes[0])
        w.start_bridges(args=[*PRODUCT_LOOP, *import_args()])
        base = slices_base(w.client)
        import_once(w, publisher, base, -1)  # warm-up: the Service and slice exist
        floors, imports, writes = [], [], []
        for i in range(REPS):
            floors.append(floor_once(publisher, observer, i))
            elapsed, wrote = import_once(w, publisher, base, i)
            imports.append(elapsed)
            writes.append(wrote)
    floor, imp = statistics.median(floors), statistics.median(imports)
    print_table(
        f"gossip change -> visible, {REPS} reps alternating, polled every 10 ms "
        "(ratio = median / floor median)",
        ["path", "median ms", "min ms", "max ms", "vs floor"],
        [
            ["floor: `tags` RPC on a publisher -> another agent's members", ms(floor),
             ms(min(floors)), ms(max(floors)), "1.00x"],
            ["import: `tags` RPC (entry moves IP) -> EndpointSlice in the API", ms(imp),
             ms(min(imports)), ms(max(imports)), f"{imp / floor:.2f}x"],
        ],
    )  # fmt: skip
    print(
        f"  apiserver writes (Services + EndpointSlices) per change: median "
        f"{statistics.median(writes):.0f}, max {max(writes)} (one slice update is 1)"
    )
    print(
        f"  import minus floor: {ms(imp - floor)} ms median: the writer's reaction (its agent "
        "learns the change like the floor's observer; then the daemon's debounce, 0.2 s by "
        "default, its imports pass and one PUT)"
    )
    print(f"\ntotal wall time {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
