"""Issue 14 on a real network: namespaced hosts, a lossy mesh, a cut link, a split, Cloudy.

Every host is a network namespace with a mesh link (Serf) and a mgmt link (the API) to a
switch namespace; the apiserver has a namespace of its own on mgmt (``tests.lab.netns``).
Real serf agents, the real apiserver, the installed ``serfbridge run`` on every host.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest

from serfbridge import cloudy, rendezvous
from tests.lab.bridges import CLUSTER
from tests.lab.netns import Host, LabNet

pytestmark = pytest.mark.integration
P = "serfbridge.io"
STATUS = f"{P}/serf-status"
WRITES = 'serfbridge_writes_total{direction="to-k8s"}'
REPLICAS = 2
PORTS = (80, 443, 8080)


@pytest.fixture
def lab() -> Iterator[Callable[..., LabNet]]:
    if shutil.which("iptables") is None:
        pytest.fail("iptables is missing: `make deps` installs it")
    made: list[LabNet] = []

    def start(n: int, **options: Any) -> LabNet:
        net = LabNet(n)
        made.append(net)
        net.__enter__()
        net.start(**options)
        return net

    yield start
    for net in made:
        print(net.logs(60))  # shown by pytest when the test failed
        net.close()


# --- what the cluster looks like ------------------------------------------------------------


def ours(net: LabNet, h: Host) -> dict[str, str]:
    labels = net.node(h.name)["metadata"].get("labels", {})
    return {k: v for k, v in labels.items() if k.startswith(f"{P}/")}


def statuses(net: LabNet) -> dict[str, str | None]:
    return {h.name: net.node(h.name)["metadata"].get("labels", {}).get(STATUS) for h in net.hosts}


def versions(net: LabNet) -> dict[str, str]:
    return {h.name: net.node(h.name)["metadata"]["resourceVersion"] for h in net.hosts}


def writes(net: LabNet) -> dict[str, float]:
    return {h.name: h.metric(WRITES) for h in net.hosts}


def placed(hosts: Sequence[Host]) -> dict[tuple[str, str], set[str]]:
    """(t, p) of every entry our cluster owns -> the hosts whose own agent carries it."""
    where: dict[tuple[str, str], set[str]] = {}
    for h in hosts:
        value = h.tags().get(cloudy.SERVICES_TAG)
        for e in cloudy.decode_services(value) if value else []:
            if cloudy.is_owned_by(e, CLUSTER):
                where.setdefault((e.txt, e.port), set()).add(h.name)
    return where


def on_exactly(hosts: Sequence[Host], n: int) -> bool:
    where = placed(hosts)
    return len(where) == len(PORTS) and all(len(v) == n for v in where.values())


def create_service(net: LabNet) -> None:
    net.kube.request("POST", "/api/v1/namespaces", verb="create", resource="namespaces",
                     body={"metadata": {"name": "web"}})  # fmt: skip
    ports = [{"name": f"p{p}", "port": p, "protocol": "TCP"} for p in PORTS]
    body = {"metadata": {"name": "site"},
            "spec": {"type": "NodePort", "ports": ports, "selector": {"app": "site"}}}  # fmt: skip
    net.kube.request("POST", "/api/v1/namespaces/web/services", verb="create",
                     resource="services", namespace="web", body=body)  # fmt: skip


def settle(net: LabNet) -> None:
    """Every Node alive, each port on exactly REPLICAS nodes, and no writes for 3 s."""
    net.wait_for(lambda: set(statuses(net).values()) == {"alive"}, 40, "all alive")
    net.wait_for(lambda: on_exactly(net.hosts, REPLICAS), 40, f"each port on {REPLICAS}")
    quiet = writes(net)
    for _ in range(20):
        time.sleep(3)
        now = writes(net)
        if now == quiet:
            for h in net.hosts:
                h.settled_patches = {n.name: _status_writes(h, n.name) for n in net.hosts}
                h.settled_offset = len(h.log_text())
            return
        quiet = now
    raise AssertionError(f"the bridges never stop writing: {quiet}\n{net.logs()}")


def observe(net: LabNet, seconds: float, check: Callable[[], None]) -> int:
    """Run ``check`` over and over for ``seconds``; the number of rounds."""
    rounds = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        rounds += 1
        time.sleep(0.5)
    return rounds


def status_line(node: str) -> str:
    return f"labelled node {node} ("


def patches_of(net: LabNet, node: Host) -> dict[str, int]:
    """host -> how many times its bridge changed ``node``'s serf-status since settling.

    Annotation-only patches (a member's tags changed, so ``P/serf-tags`` follows) are not
    counted: they are the Node's own news, not a verdict."""
    return {h.name: _status_writes(h, node.name) - h.settled_patches.get(node.name, 0)
            for h in net.hosts}  # fmt: skip


def since_settle(h: Host) -> str:
    return h.log_text()[h.settled_offset :]


def _status_writes(h: Host, node: str) -> int:
    return sum(
        1
        for line in h.log_text().splitlines()
        if status_line(node) in line and f"{STATUS}=" in line.partition("): ")[2]
    )


def sees(viewer: Host, members: Sequence[Host], status: str) -> bool:
    view = viewer.members()
    return all(view.get(h.member, {}).get("status") == status for h in members)


# --- the acceptance tests ---------------------------------------------------------------------


def test_five_percent_loss_both_ways_for_45s_changes_nothing(lab) -> None:
    net: LabNet = lab(3)
    create_service(net)
    settle(net)
    labels_before, rv_before, placed_before = statuses(net), versions(net), placed(net.hosts)
    writes_before = writes(net)
    net.loss(0.05)

    def unchanged() -> None:
        assert statuses(net) == labels_before
        assert versions(net) == rv_before, "a Node was written under packet loss"

    rounds = observe(net, 45, unchanged)
    assert placed(net.hosts) == placed_before
    assert writes(net) == writes_before
    net.clear_faults()
    assert rounds > 10


def test_cut_mesh_link_with_mgmt_up_majority_labels_it_once(lab) -> None:
    net: LabNet = lab(4)
    create_service(net)
    settle(net)
    *majority, cut = net.hosts
    before, majority_labels = writes(net), {h.name: ours(net, h) for h in majority}
    net.cut(cut)
    net.wait_for(lambda: statuses(net)[cut.name] == "failed", 60, f"{cut.name} labelled failed")
    rv = versions(net)

    def during() -> None:
        now = statuses(net)
        assert now[cut.name] == "failed", "the cut node's own bridge fought the verdict"
        assert all(now[h.name] == "alive" for h in majority), now
        assert {h.name: ours(net, h) for h in majority} == majority_labels
        assert versions(net) == rv, "a Node was written again during the partition"

    net.wait_for(lambda: on_exactly(majority, REPLICAS), 30, "ports moved to the majority")
    observe(net, 12, during)
    assert on_exactly(majority, REPLICAS)
    first = rendezvous.rank(cut.name, [h.name for h in majority])[0]
    # One failure label for the cut Node, by one bridge of the majority; the cut node's
    # own bridge wrote nothing at all, to any Node.
    assert patches_of(net, cut) == {h.name: int(h.name == first) for h in net.hosts}
    assert writes(net)[cut.name] == before[cut.name]
    # Alone in its part, the cut node takes over the catalog there (docs: "Partitions").
    net.wait_for(lambda: len(placed([cut])) == len(PORTS), 60, "the cut node publishes all")
    during()
    net.heal(cut)
    net.wait_for(lambda: set(statuses(net).values()) == {"alive"}, 60, "all alive after heal")
    net.wait_for(lambda: on_exactly(net.hosts, REPLICAS), 60, "each port on 2 after heal")
    time.sleep(3)
    assert set(statuses(net).values()) == {"alive"}
    assert on_exactly(net.hosts, REPLICAS)
    # The majority's verdict is cleared by the majority: the same one bridge, one write.
    assert patches_of(net, cut) == {h.name: 2 * int(h.name == first) for h in net.hosts}
    assert all(n == 0 for h in majority for n in patches_of(net, h).values())


def test_two_against_two_split_writes_nothing(lab) -> None:
    net: LabNet = lab(4)
    create_service(net)
    settle(net)
    a, b = net.hosts[:2], net.hosts[2:]
    net.partition(a, b)
    net.wait_for(
        lambda: sees(a[0], b, "failed") and sees(b[0], a, "failed"),
        60,
        "each side sees the other failed",
    )
    # While the split is still being noticed, a bridge may record its own agent's new
    # tags (its ports moved) on its own Node: that is no fight. Once every bridge sees
    # no majority, nothing is written by anyone.
    net.wait_for(
        lambda: all("not in a majority" in h.log_text() for h in net.hosts),
        30,
        "every bridge sees no majority",
    )
    rv = versions(net)

    def no_fight() -> None:
        assert set(statuses(net).values()) == {"alive"}
        assert versions(net) == rv

    observe(net, 15, no_fight)  # longer than --failure-hold, several passes
    assert all(n == 0 for h in net.hosts for n in patches_of(net, h).values())
    assert not any("ranks first for" in since_settle(h) for h in net.hosts), "wrote for another"
    net.clear_faults()
    net.wait_for(net.all_see_all_alive, 60, "the split healed")
    net.wait_for(lambda: on_exactly(net.hosts, REPLICAS), 60, "each port on 2 after heal")
    time.sleep(3)
    assert set(statuses(net).values()) == {"alive"}
    assert all(n == 0 for h in net.hosts for n in patches_of(net, h).values())
    assert not any("ranks first for" in since_settle(h) for h in net.hosts)


def test_cloudy_style_restart_keeps_the_node_alive(lab) -> None:
    net: LabNet = lab(3, cloudy=True)
    net.wait_for(lambda: set(statuses(net).values()) == {"alive"}, 40, "all alive")
    host = net.hosts[1]
    old = host.member
    host.stop_agent()
    host.start_cloudy_agent(net.hosts[0])
    assert host.member != old
    member_key = f"{P}/serf-member"

    def recorded() -> bool:
        return net.node(host.name)["metadata"]["annotations"].get(member_key) == host.member

    def alive() -> None:
        assert statuses(net)[host.name] == "alive"

    deadline = time.monotonic() + 60
    while not recorded():
        alive()
        assert time.monotonic() < deadline, f"new member never recorded\n{net.logs()}"
        time.sleep(0.3)
    # Cloudy's SIGTERM does not leave: the old name turns failed after the WAN timeouts.
    others = [h for h in net.hosts if h is not host]
    deadline = time.monotonic() + 120
    while not all(h.members().get(old, {}).get("status") == "failed" for h in others):
        alive()
        assert time.monotonic() < deadline, f"old member {old} never failed\n{net.logs()}"
        time.sleep(0.5)
    observe(net, 10, alive)  # past --failure-hold and a few passes
    assert recorded()
    for h in net.hosts:  # the old name's failure never became a write for the Node
        assert f"labelled node {host.name} (member failed" not in h.log_text()
