"""The event handler with no daemon: fail fast when no pass can run, bound one that can.

Serf runs handlers one at a time on its event loop with no timeout, and warns
``Script ... slow, execution exceeding 1s`` (``reference/serf-rpc.md`` §7.4). With no
daemon and no Kubernetes credentials the installed shim must return well under that,
with one line saying why; a pass that can start but hangs is cut off.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from serfbridge.handler import IN_CLUSTER_TOKEN, STANDALONE_BUDGET, maybe_no_credentials
from tests.lab import commands
from tests.lab.serfagents import AgentSpec, SerfCluster

MEMBER_EVENTS = "member-join,member-leave,member-failed,member-update,member-reap"


@pytest.mark.parametrize(
    ("env", "missing"),
    [
        pytest.param({"KUBECONFIG": "{tmp}/kubeconfig"}, None, id="kubeconfig-env"),
        pytest.param({"KUBECONFIG": "{tmp}/absent"}, "{tmp}/absent", id="kubeconfig-env-missing"),
        pytest.param({"HOME": "{tmp}/home"}, None, id="home-kube-config"),
        pytest.param({"HOME": "{tmp}"}, "{tmp}/.kube/config", id="home-without-config"),
        pytest.param({"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, IN_CLUSTER_TOKEN, id="in-cluster"),
        pytest.param({"SERFBRIDGE_CONFIG": "{tmp}/config"}, None, id="kubeconfig-in-file"),
    ],
)
def test_which_credentials_count(tmp_path, env, missing) -> None:
    (tmp_path / "kubeconfig").write_text("apiVersion: v1\n")
    (tmp_path / "home" / ".kube").mkdir(parents=True)
    (tmp_path / "home" / ".kube" / "config").write_text("apiVersion: v1\n")
    (tmp_path / "config").write_text(f"KUBECONFIG={tmp_path}/kubeconfig\n")
    env = {"HOME": str(tmp_path), "SERFBRIDGE_CONFIG": "/dev/null"} | {
        k: v.format(tmp=tmp_path) for k, v in env.items()
    }
    why = maybe_no_credentials(env)
    if missing is None:
        assert why is None
    else:
        assert why == f"no Kubernetes credentials ({missing.format(tmp=tmp_path)} does not exist)"


def handler_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """What a node with no daemon and (unless ``extra`` says) no credentials gives it."""
    return {
        "SERFBRIDGE_HANDLE": commands.command("serfbridge-handle"),
        "SERFBRIDGE_CONFIG": "/dev/null",
        "SERFBRIDGE_HANDLER_SOCKET": str(tmp_path / "no-daemon.sock"),
        "HOME": str(tmp_path),
        "KUBECONFIG": "",
        **extra,
    }


@pytest.mark.integration
def test_real_agent_without_daemon_or_kubeconfig_is_not_held(serf_cluster, tmp_path) -> None:
    times = tmp_path / "handler-times"
    env = " ".join(f"{k}={v}" for k, v in handler_env(tmp_path).items())
    # Serf runs the handler with /bin/sh -c: time the shim there, per event, in ms.
    timed = (
        f"s=$(date +%s%N); env -u KUBERNETES_SERVICE_HOST {env} {commands.shim()}; rc=$?; "
        f'echo "$SERF_EVENT $rc $(( ($(date +%s%N) - s) / 1000000 ))" >> {times}; exit $rc'
    )
    specs = [AgentSpec("lonely", event_handlers=[f"{MEMBER_EVENTS}={timed}"]), AgentSpec("peer")]
    cluster: SerfCluster = serf_cluster(specs=specs)
    lonely, peer = cluster.agents
    peer.terminate()  # a graceful leave: member-leave after the member-join
    cluster.wait_for(
        lambda: times.exists() and len(times.read_text().splitlines()) >= 2, 30, what="2 runs"
    )
    runs = [line.split() for line in times.read_text().splitlines()]
    millis = [int(ms) for _, _, ms in runs]
    print(f"handler runs (event, exit, ms): {runs}")
    assert {rc for _, rc, _ in runs} == {"2"}
    assert max(millis) < 1000, runs
    log = lonely.log_text()
    print("\n".join(line for line in log.splitlines() if "script" in line.lower()))
    assert "slow, execution exceeding" not in log
    line = (
        f"serfbridge-handle: no daemon at {tmp_path}/no-daemon.sock and no Kubernetes "
        f"credentials ({tmp_path}/.kube/config does not exist): member-"
    )
    assert log.count(line) == len(runs), log
    assert "Traceback" not in log


class SilentApiServer:
    """A fake, named as one: a TCP listener that never answers, so a pass hangs in its
    TLS handshake (the real apiserver answers or refuses; it does not hang on cue)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
            f"clusters: [{{name: s, cluster: {{server: 'https://127.0.0.1:{self.port}', "
            "insecure-skip-tls-verify: true}}]\n"
            "users: [{name: u, user: {token: t}}]\n"
            "contexts: [{name: c, context: {cluster: s, user: u}}]\n"
        )
        return path


@pytest.mark.integration
def test_standalone_pass_that_hangs_is_cut_off(tmp_path) -> None:
    server = SilentApiServer()
    try:
        kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        env |= handler_env(tmp_path, KUBECONFIG=str(kubeconfig), SERF_EVENT="member-join")
        env["SERF_RPC_ADDR"] = "127.0.0.1:1"  # never reached: the Kubernetes read comes first
        began = time.monotonic()
        proc = subprocess.run(
            [commands.shim()], input=b"", env=env, capture_output=True, timeout=60, check=False
        )
        took = time.monotonic() - began
    finally:
        server.sock.close()
    assert proc.returncode == 1
    assert proc.stderr.decode().splitlines() == [
        f"serfbridge-handle: standalone pass gave up after {STANDALONE_BUDGET:g}s"
    ]
    assert STANDALONE_BUDGET <= took < STANDALONE_BUDGET + 5
