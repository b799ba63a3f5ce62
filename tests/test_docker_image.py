"""Our image (deploy/Dockerfile), run as deploy/daemonset.yaml runs it, next to agents in
containers; and the lab's container backend really is containers.

Collected only under ``make test-docker`` (``tests/conftest.py``): it needs the engine and
the images that target builds. ``SERFBRIDGE_IMAGE`` names our image.
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import serfdocker
from tests.lab.bridges import TUNING, World
from tests.lab.serfagents import SerfCluster, free_port
from tests.test_to_serf import (
    agent_tags,
    create_service,
    decoded,
    delete_service,
    make_namespace,
    owned_by,
    port_spec,
    service_body,
)

pytestmark = pytest.mark.integration
P = "serfbridge.io"
IMAGE = os.environ.get("SERFBRIDGE_IMAGE", "serfbridge:0.1.0")


def docker(*args: str) -> str:
    return serfdocker.docker(*args)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def http_ok(addr: str, path: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=2) as reply:
            return reply.status == 200
    except OSError:
        return False


@pytest.fixture
def bridge_container(tmp_path: Path) -> Iterator[list[str]]:
    """Ids of the bridge containers a test starts; all removed at teardown."""
    ids: list[str] = []
    yield ids
    for container in ids:
        print(docker("logs", "--tail", "30", container))
        docker("rm", "-f", container)


def run_like_the_daemonset(w: World, node: str, sockets: Path, ns: str) -> tuple[str, str]:
    """``docker run`` with the DaemonSet's settings; returns (container id, http addr)."""
    http_addr = f"127.0.0.1:{free_port()}"
    kube_dir = w.apiserver.kubeconfig.parent
    env = {
        "SERFBRIDGE_NODE_NAME": node,
        "SERFBRIDGE_CLUSTER": w.cluster,
        "SERF_RPC_ADDR": w.agent_for(node).rpc_addr,
        "SERFBRIDGE_LOG_FORMAT": "json",
        "KUBECONFIG": str(w.apiserver.kubeconfig),
    }
    # hostNetwork, uid 0 with no capabilities, read-only root, no privilege escalation,
    # the handler socket directory from the host, an 8 MiB /tmp in memory.
    options = ["--label", serfdocker.LABEL, "--network", "host", "--user", "0:0"]
    options += ["--cap-drop", "ALL", "--read-only"]
    options += ["--security-opt", "no-new-privileges", "--tmpfs", "/tmp:size=8m"]
    options += ["--memory", "128m"]
    options += ["--mount", f"type=bind,source={sockets},target=/run/serfbridge"]
    options += ["--mount", f"type=bind,source={kube_dir},target={kube_dir},readonly"]
    for key, value in env.items():
        options += ["-e", f"{key}={value}"]
    args = [f"--http-addr={http_addr}", "--handler-socket=/run/serfbridge/handler.sock"]
    args += [*TUNING, "--namespace", ns]
    container = docker("run", "-d", *options, IMAGE, *args).strip()
    return container, http_addr


def test_our_image_publishes_a_service_and_labels_its_node(
    world, bridge_container, tmp_path, request, capsys
):
    w: World = world(1)
    node = w.nodes[0]
    agent = w.agent_for(node)
    assert isinstance(agent, serfdocker.DockerSerfAgent)  # the agent is a container too
    ns = make_namespace(w, "img")
    sockets = tmp_path / "run-serfbridge"
    sockets.mkdir()
    container, http_addr = run_like_the_daemonset(w, node, sockets, ns)
    bridge_container.append(container)
    w.wait_for(lambda: http_ok(http_addr, "/readyz"), timeout=60, what="the image's /readyz")

    reply = create_service(w, ns, service_body("web", [port_spec("http", 80)]))
    # The apiserver is shared: a Service left behind would be published by later tests.
    request.addfinalizer(lambda: delete_service(w, ns, "web"))
    node_port = str(reply["spec"]["ports"][0]["nodePort"])

    def published() -> bool:  # to-serf: the entry is in the agent's own tags
        entries = owned_by(decoded(agent_tags(agent)), w.cluster)
        return [(e.port, e.txt) for e in entries] == [(node_port, f"k8s=lab/{ns}/web/80")]

    w.wait_for(published, timeout=30, what="the Service in the agent's tags")
    assert agent_tags(agent)["k8s"] == f"lab/{node}"
    w.wait_for(  # to-k8s: the Node's labels
        lambda: w.node_metadata(node)[0].get(f"{P}/serf-status") == "alive",
        timeout=30,
        what="the serf-status label",
    )
    assert (sockets / "handler.sock").is_socket()  # on the host, for the host agent's handler

    pid = int(docker("inspect", "-f", "{{.State.Pid}}", container))
    time.sleep(2)  # a few passes, then measure
    rss = rss_kib(pid)
    size = int(docker("image", "inspect", "-f", "{{.Size}}", IMAGE))
    with capsys.disabled():  # the figures belong in the CI log
        print(f"\nimage {IMAGE}: {size / 1e6:.1f} MB; bridge container RSS {rss / 1024:.1f} MiB")
    assert rss < 128 * 1024  # the DaemonSet's memory limit
    logs = docker("logs", container)
    assert all(json.loads(line) for line in logs.splitlines() if line.startswith("{"))


def test_lab_agents_are_containers_paused_killed_and_restarted():
    with SerfCluster(2) as cluster:
        n2 = cluster.agent("n2")
        assert isinstance(n2, serfdocker.DockerSerfAgent) and n2.container is not None

        def state() -> str:
            return docker("inspect", "-f", "{{.State.Status}}", n2.container or "")

        assert state().strip() == "running"
        assert "serf agent running" in n2.log_text().lower()  # from `docker logs`
        n2.stop()
        assert state().strip() == "paused"
        cluster.wait_status("n2", "failed")
        n2.cont()
        cluster.wait_status("n2", "alive")
        first_pid = n2.pid
        n2.kill()
        assert state().strip() == "exited"
        n2.start()  # `docker start`: the same container, the same ports
        assert state().strip() == "running" and n2.pid != first_pid
        cluster.wait_status("n2", "alive")
        container = n2.container
    assert docker("ps", "-aq", "--filter", f"id={container}").strip() == ""
