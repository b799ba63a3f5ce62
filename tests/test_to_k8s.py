"""Serf -> Kubernetes with real agents, the real apiserver and one daemon per agent."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from serfbridge import rendezvous
from serfbridge.rpc.client import SerfClient
from tests.lab import commands, serfdocker
from tests.lab.bridges import World
from tests.lab.serfagents import AgentSpec

pytestmark = pytest.mark.integration
P = "serfbridge.io"


def labels(w: World, node: str) -> dict[str, str]:
    return w.node_metadata(node)[0]


def ours(w: World, node: str) -> dict[str, str]:
    return {k: v for k, v in labels(w, node).items() if k.startswith(f"{P}/")}


def to_k8s_writes(w: World) -> dict[str, float]:
    """serfbridge_writes_total{direction="to-k8s"} per bridge."""
    result = {}
    for node, bridge in w.bridges.items():
        _, text = bridge.get("/metrics")
        match = re.search(r'serfbridge_writes_total\{direction="to-k8s"\} ([0-9.e+]+)', text)
        result[node] = float(match[1]) if match else -1.0
    return result


def settled_writes(w: World, quiet: float = 2.0, timeout: float = 30.0) -> dict[str, float]:
    """``to_k8s_writes`` once no bridge has written for ``quiet`` seconds: after the alive
    labels, each bridge still records its own member's tags (its ``k8s`` tag lands a pass
    later), and a count taken in between would blame that write on the next step."""
    deadline = time.monotonic() + timeout
    last, since = to_k8s_writes(w), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = to_k8s_writes(w)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError(f"to-k8s writes never settled: {last}\n{w.logs()}")


def test_join_tag_change_removal_and_leave(world) -> None:
    w: World = world(3)
    _, k2, k3 = w.nodes
    with SerfClient(w.agent_for(k2).rpc_addr) as c:
        c.tags({"role": "web", "zone": "east"})
    w.start_bridges()
    w.wait_for(
        lambda: all(labels(w, n).get(f"{P}/serf-status") == "alive" for n in w.nodes),
        what="alive labels on every node",
    )
    w.wait_for(lambda: labels(w, k2).get(f"{P}/tag.role") == "web", what="tag label")
    annotations = w.node_metadata(k2)[1]
    assert annotations[f"{P}/serf-member"] == "serf-" + k2
    assert json.loads(annotations[f"{P}/serf-tags"])["zone"] == "east"
    assert annotations[f"{P}/owned-labels"] == ",".join(sorted(ours(w, k2)))

    with SerfClient(w.agent_for(k2).rpc_addr) as c:
        c.tags({"role": "db"}, delete=["zone"])
    w.wait_for(
        lambda: labels(w, k2).get(f"{P}/tag.role") == "db" and f"{P}/tag.zone" not in labels(w, k2),
        what="tag change and removal",
    )

    with SerfClient(w.agent_for(k3).rpc_addr) as c:  # a graceful leave gives `left`
        c.leave()
    w.wait_for(
        lambda: labels(w, k3).get(f"{P}/serf-status") == "left", timeout=30, what="left label"
    )


def test_kill_9_gives_failed_written_by_exactly_one_bridge(world) -> None:
    w: World = world(3)
    k1, k2, k3 = w.nodes
    w.start_bridges()
    w.wait_for(
        lambda: all(labels(w, n).get(f"{P}/serf-status") == "alive" for n in w.nodes),
        what="alive labels on every node",
    )
    before = settled_writes(w)
    w.agent_for(k3).kill()
    w.wait_for(
        lambda: labels(w, k3).get(f"{P}/serf-status") == "failed", timeout=40, what="failed label"
    )
    time.sleep(2)  # let every bridge run its passes for the event
    after = to_k8s_writes(w)
    delta = {n: after[n] - before[n] for n in (k1, k2)}
    expected_writer = rendezvous.rank(k3, [k1, k2])[0]
    other = ({k1, k2} - {expected_writer}).pop()
    assert delta == {expected_writer: 1.0, other: 0.0}  # one PATCH, by one bridge
    assert "ranks first for " + k3 in w.bridges[expected_writer].log_text()


def test_partition_guard_two_of_three_stopped(world) -> None:
    w: World = world(3)
    k1, k2, k3 = w.nodes
    w.start_bridges()
    w.wait_for(lambda: all(labels(w, n).get(f"{P}/serf-status") == "alive" for n in w.nodes))
    for node in (k2, k3):
        w.agent_for(node).stop()  # SIGSTOP: the agents freeze, their bridges see nothing
    w.wait_for(
        lambda: all(
            s == "failed"
            for name, s in w.serf.statuses(w.agent_for(k1)).items()
            if name != "serf-" + k1
        ),
        timeout=40,
        what="k1's agent sees the other two failed",
    )
    before = to_k8s_writes(w)[k1]
    time.sleep(3)  # several passes of k1's bridge
    assert labels(w, k2)[f"{P}/serf-status"] == "alive"
    assert labels(w, k3)[f"{P}/serf-status"] == "alive"
    assert to_k8s_writes(w)[k1] == before
    assert "partition guard: 1/3 Nodes alive" in w.bridges[k1].log_text()
    for node in (k2, k3):
        w.agent_for(node).cont()


def test_hand_set_labels_and_foreign_keys_are_never_touched(world) -> None:
    w: World = world(3)
    k1 = w.nodes[0]
    hand = {"serf-ish": "mine", f"{P}-other/x": "y", "team": "ops"}
    w.client.request(
        "PATCH",
        f"/api/v1/nodes/{k1}",
        verb="patch",
        resource="nodes",
        body={"metadata": {"labels": hand, "annotations": {"note": "hand"}}},
        content_type="application/merge-patch+json",
    )
    w.start_bridges()
    w.wait_for(lambda: labels(w, k1).get(f"{P}/serf-status") == "alive")
    with SerfClient(w.agent_for(k1).rpc_addr) as c:
        c.tags({"serf-ish": "gossip", "team": "gossip"})
    w.wait_for(lambda: labels(w, k1).get(f"{P}/tag.team") == "gossip")
    with SerfClient(w.agent_for(k1).rpc_addr) as c:
        c.tags(delete=["team", "serf-ish"])
    w.wait_for(lambda: f"{P}/tag.team" not in labels(w, k1))
    final_labels, final_annotations = w.node_metadata(k1)
    assert {k: final_labels[k] for k in hand} == hand
    assert final_annotations["note"] == "hand"


HOSTILE_TAGS = {
    "a/b": "slash",
    "a b": "space",
    "ключ": "unicode",
    "long": "x" * 300,
    "kubernetes.io/role": "master",
    "node-role.kubernetes.io/master": "",
    "csv": "a,b=c",
    "ok": "fine",
}


def test_hostile_gossip_becomes_no_invalid_label(world) -> None:
    w: World = world(2)
    k1, k2 = w.nodes
    w.start_bridges()
    with SerfClient(w.agent_for(k1).rpc_addr) as c:
        c.tags(HOSTILE_TAGS)
    w.wait_for(lambda: labels(w, k1).get(f"{P}/tag.ok") == "fine")
    assert set(ours(w, k1)) == {f"{P}/serf-status", f"{P}/tag.ok"}
    assert "kubernetes.io/role" not in labels(w, k1)
    with SerfClient(w.agent_for(k2).rpc_addr) as c:  # 60 tags on one member
        c.tags({f"t{i}": str(i) for i in range(60)})
    w.wait_for(lambda: len(ours(w, k2)) == 61, what="60 tag labels")
    assert w.bridges[k1].running() and w.bridges[k2].running()
    assert "gossip skipped" in w.bridges[k1].log_text()
    _, metrics = w.bridges[k1].get("/metrics")
    assert "serfbridge_gossip_rejects_total" in metrics


def test_sync_once_dry_run_then_apply_then_nothing(world) -> None:
    w: World = world(2)
    k1 = w.nodes[0]
    with SerfClient(w.agent_for(k1).rpc_addr) as c:
        c.tags({"role": "edge"})
    dry = w.cli(k1, "sync", "--once", "--dry-run", "--no-to-serf")
    assert dry.exit_code == 0, dry.output
    assert f"would patch node {k1}" in dry.output and f"{P}/tag.role: edge" in dry.output
    assert ours(w, k1) == {}
    applied = w.cli(k1, "sync", "--once", "--no-to-serf")
    assert "1 PATCH request(s) sent" in applied.output
    assert ours(w, k1) == {f"{P}/serf-status": "alive", f"{P}/tag.role": "edge"}
    again = w.cli(k1, "sync", "--once", "--no-to-serf")
    assert "nothing to change" in again.output and "PATCH" not in again.output


def handler_specs(w_prefix: str, kubeconfig: str, workdir: Path) -> list[AgentSpec]:
    specs = []
    for i in (1, 2, 3):
        node = f"{w_prefix}{i}"
        env = {
            "SERFBRIDGE_HANDLE": serfdocker.handle_command(),  # the venv's, or the image's
            "SERFBRIDGE_CONFIG": "/dev/null",
            "SERF_RPC_ADDR": "{rpc_addr}",
            "KUBECONFIG": kubeconfig,
            "SERFBRIDGE_CLUSTER": "lab",
            "SERFBRIDGE_NODE_NAME": node,
            "SERFBRIDGE_HANDLER_SOCKET": str(workdir / f"{node}.sock"),
        }
        command = "env " + " ".join(f"{k}={v}" for k, v in env.items())
        # Serf splits a handler on its first "=": the filter must come first.
        events = "member-join,member-leave,member-failed,member-update,member-reap"
        handler = f"{events}={command} {commands.shim()}"
        specs.append(AgentSpec(f"serf-{node}", event_handlers=[handler]))
    return specs


def normalized(w: World) -> list[tuple[dict[str, str], dict[str, str]]]:
    """Our keys of every Node, with run-specific names and ports made comparable."""

    def norm(d: dict[str, str], node: str) -> dict[str, str]:
        return {
            k: re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:*", v.replace(node, "NODE"))
            for k, v in d.items()
            if k.startswith(f"{P}/")
        }

    return [tuple(norm(d, node) for d in w.node_metadata(node)) for node in w.nodes]


_RESULTS: dict[str, object] = {}


@pytest.mark.parametrize("with_daemon", [False, True], ids=["standalone", "daemon"])
def test_both_handler_paths_give_identical_nodes(kube_apiserver, tmp_path, with_daemon) -> None:
    prefix = f"hp{int(with_daemon)}k"
    sock_dir = tmp_path / "sockets"
    sock_dir.mkdir()
    specs = handler_specs(prefix, str(kube_apiserver.kubeconfig), sock_dir)
    with World(apiserver=kube_apiserver, agent_specs=specs, node_prefix=prefix) as w:
        if with_daemon:
            for node in w.nodes:
                # to-k8s only: to-serf would add the `k8s` tag, a difference of its own.
                args = ["--no-to-serf", "--handler-socket", str(sock_dir / f"{node}.sock")]
                w.start_bridges(nodes=[node], args=args)
        # The same event sequence in both runs: an update on every agent, then a tag.
        for agent in w.serf.agents:
            with SerfClient(agent.rpc_addr) as c:
                c.tags({"boot": "1"})
        with SerfClient(w.agent_for(w.nodes[1]).rpc_addr) as c:
            c.tags({"role": "web"})
        w.wait_for(
            lambda: (
                labels(w, w.nodes[1]).get(f"{P}/tag.role") == "web"
                and all(labels(w, n).get(f"{P}/tag.boot") == "1" for n in w.nodes)
            ),
            timeout=30,
            what="labels from the events",
        )
        time.sleep(1.5)  # any late handler run lands before we compare
        if with_daemon:
            assert any("handed over by the handler" in b.log_text() for b in w.bridges.values())
        result = normalized(w)
    if with_daemon:
        assert result == _RESULTS["standalone"]
    else:
        _RESULTS["standalone"] = result
