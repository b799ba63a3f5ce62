"""``make demo``: the whole bridge on one machine, with real parts, in under a minute.

Starts a local kube-apiserver (with etcd), three serf agents, three Ready Nodes and one
``serfbridge run`` per node; creates a two-port NodePort Service; shows the gossip view
(``serfbridge services``) and the Node labels (``kubectl get nodes -L ...``); kills one
agent with -9 and shows the effect; then stops everything it started.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from tests.lab import commands
from tests.lab.bridges import World

P = "serfbridge.io"
serfbridge_command = commands.command("serfbridge")  # the dev venv's: runs the checkout
SERVICE = {
    "metadata": {"name": "web", "annotations": {f"{P}/description": "demo web"}},
    "spec": {
        "type": "NodePort",
        "selector": {"app": "web"},
        "ports": [
            {"name": "http", "port": 80, "nodePort": 30080},
            {"name": "https", "port": 443, "nodePort": 30443},
        ],
    },
}


def step(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def show(argv: list[str]) -> None:
    shown = [
        Path(a).name if a == serfbridge_command else a
        for a in argv
        if a not in ("--config", "/dev/null")
    ]
    print("$ " + " ".join(shown), flush=True)
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    print((result.stdout + result.stderr).rstrip(), flush=True)


def wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            print(f"   ({what}: {time.monotonic() - started:.1f}s)", flush=True)
            return
        time.sleep(0.2)
    raise SystemExit(f"demo: timed out waiting for {what}")


def main() -> None:
    began = time.monotonic()
    serfbridge = [serfbridge_command, "--config", "/dev/null"]
    step("starting kube-apiserver + etcd, 3 serf agents, 3 Nodes, one serfbridge per node")
    with World(3) as w:
        w.start_bridges()
        kubectl = [shutil.which("kubectl") or "kubectl", f"--kubeconfig={w.apiserver.kubeconfig}"]
        agent1 = w.agent_for(w.nodes[0]).rpc_addr

        def entries() -> int:
            out = subprocess.run(
                [*serfbridge, "--rpc-addr", agent1, "services", "--json"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            return out.count('"node_id"')

        step("serf members")
        show([*serfbridge, "--rpc-addr", agent1, "members"])
        step("creating NodePort Service default/web (ports 30080, 30443); replicas 2 by default")
        w.client.request(
            "POST",
            "/api/v1/namespaces/default/services",
            verb="create",
            resource="services",
            namespace="default",
            body=SERVICE,
        )
        wait(lambda: entries() == 4, 20, "2 ports x 2 nodes in the gossip")
        step("the gossip view, as every Cloudy node's UI lists it")
        show([*serfbridge, "--rpc-addr", agent1, "services"])
        show([*serfbridge, "--rpc-addr", agent1, "services", "--json"])
        step("Node labels written from Serf membership")
        columns = f"-L={P}/serf-status"
        show([*kubectl, "get", "nodes", columns])

        victim = w.nodes[2]
        step(f"kill -9 the serf agent of {victim}")
        w.agent_for(victim).kill()
        wait(
            lambda: w.node_metadata(victim)[0].get(f"{P}/serf-status") == "failed",
            40,
            f"{victim} labelled failed by one surviving bridge",
        )
        wait(lambda: entries() == 4, 20, "its entries moved to the surviving nodes")
        show([*kubectl, "get", "nodes", columns])
        show([*serfbridge, "--rpc-addr", agent1, "services"])
        step("cleaning up (every process stopped by PID)")
    print(f"\ndemo finished in {time.monotonic() - began:.0f}s", flush=True)


if __name__ == "__main__":
    main()
