"""Importing the gossip into Kubernetes (issue 15): how long a change takes to reach the API.

One run, side by side:

* floor: a ``tags`` RPC on a plain publisher agent until another agent's ``members``
  shows the new tag: what the gossip itself costs;
* event floor: the same ``tags`` RPC until the ``member-update`` event reaches a stream
  on that agent (the daemon's own subscription): the earliest any event-driven reader can
  react, since the agent coalesces member events before it sends them;
* import: a ``tags`` RPC on the same publisher that moves its ``syncthing`` entry to a new
  IP, until the EndpointSlice in the API holds that IP (GET every 10 ms); the writes the
  apiserver served for it (``apiserver_request_total``) are counted per change.

Floor and import alternate, so both see the same load, with ``QUIET`` seconds between
them so that no pass set off by one measurement's late event lands in the next. Runs on
one lab world (real kube-apiserver, 3 serf agents with 3 daemons at the product's
debounce, 1 publisher).
Speed is reported as a ratio to the floor, never asserted. Needs ``serf`` and the lab
apiserver (``make deps kube-apiserver``).

Run: ``.venv/bin/python -m bench.bench_imports`` (or ``make bench-imports``).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from bench.bench_rpc_members import ms, print_table
from serfbridge.errors import KubeError
from serfbridge.member_events import MEMBER_FILTER
from serfbridge.rpc.client import SerfClient
from serfbridge.rpc.models import MemberEvent
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
#: Quiet between measurements, longer than the agent's member-event coalescing (~0.8 s)
#: plus the debounce and a pass: a daemon pass that an earlier change's late event sets
#: off must not land inside the next measurement (it reads the newer gossip early, and
#: would make the import look faster than the event it reacts to).
QUIET = 2.0


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if predicate():
            return
        time.sleep(POLL)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


class EventClock:
    """A thread on ``observer``'s event stream that stamps each ``bench-floor`` value with
    the moment its ``member-update`` arrived (``perf_counter``), as the daemon receives it."""

    def __init__(self, observer: SerfAgent, publisher: str) -> None:
        self.client = SerfClient(observer.rpc_addr)
        self.publisher = publisher
        self.seen: dict[str, float] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> EventClock:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.client.close()

    def _run(self) -> None:
        with self.client.stream(MEMBER_FILTER) as events:
            while not self.stopping.is_set():
                item = events.get(timeout=0.2)
                if not isinstance(item, MemberEvent):
                    continue
                now = time.perf_counter()
                for m in item.members:
                    value = m.tags.get("bench-floor")
                    if m.name == self.publisher and value is not None:
                        self.seen.setdefault(value, now)


def floor_once(
    publisher: SerfAgent, observer: SerfAgent, events: EventClock, i: int
) -> tuple[float, float]:
    """A ``tags`` RPC on the publisher until the observer's ``members`` shows it, and
    until its ``member-update`` event reached the observer's stream."""
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
    polled = time.perf_counter() - started
    wait_until(lambda: str(i) in events.seen, 15, "the floor tag's member-update")
    return polled, events.seen[str(i)] - started


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
    time.sleep(QUIET)  # the writer's later passes: counted against this change too
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
        floors, event_floors, imports, writes = [], [], [], []
        with EventClock(observer, publisher.name) as events:
            for i in range(REPS):
                polled, evented = floor_once(publisher, observer, events, i)
                time.sleep(QUIET)  # the daemons' passes on the floor's own event are over
                floors.append(polled)
                event_floors.append(evented)
                elapsed, wrote = import_once(w, publisher, base, i)
                imports.append(elapsed)
                writes.append(wrote)
    floor, imp = statistics.median(floors), statistics.median(imports)
    event_floor = statistics.median(event_floors)
    print_table(
        f"gossip change -> visible, {REPS} reps alternating, polled every 10 ms "
        "(ratio = median / floor median)",
        ["path", "median ms", "min ms", "max ms", "vs floor"],
        [
            ["floor: `tags` RPC on a publisher -> another agent's members", ms(floor),
             ms(min(floors)), ms(max(floors)), "1.00x"],
            ["event floor: same `tags` RPC -> member-update on that agent's stream",
             ms(event_floor), ms(min(event_floors)), ms(max(event_floors)),
             f"{event_floor / floor:.2f}x"],
            ["import: `tags` RPC (entry moves IP) -> EndpointSlice in the API", ms(imp),
             ms(min(imports)), ms(max(imports)), f"{imp / floor:.2f}x"],
        ],
    )  # fmt: skip
    print(
        f"  apiserver writes (Services + EndpointSlices) per change: median "
        f"{statistics.median(writes):.0f}, max {max(writes)} (one slice update is 1)"
    )
    print(
        f"  import minus event floor: {ms(imp - event_floor)} ms median: the daemon's own "
        "share (its debounce, 0.2 s by default, its imports pass and one PUT); event floor "
        f"minus floor, {ms(event_floor - floor)} ms, is the agent's coalescing of member "
        "events, which no event-driven reader avoids"
    )
    print(f"\ntotal wall time {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
