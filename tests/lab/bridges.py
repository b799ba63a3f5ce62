"""Test and demo infrastructure: ``serfbridge run`` daemons as real processes, and a world.

``BridgeProcess`` runs one daemon (its own HTTP port, handler socket and log) and can
kill -9, terminate and restart it. ``World`` puts the real parts together: a lab
apiserver, N serf agents, one Kubernetes Node per agent (Ready, with an InternalIP) and,
on request, one daemon per agent. Used by the integration tests, ``make demo`` and
``bench/``. Not imported by the package itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from serfbridge import kube
from tests.lab import commands
from tests.lab.apiserver import LabApiServer
from tests.lab.serfagents import AgentSpec, SerfCluster, free_port

CLUSTER = "lab"
#: Fast loops for tests and the demo; on the command line, so they beat any config file.
TUNING = ("--resync", "10", "--debounce", "0.1", "--max-wait", "1")


class BridgeProcess:
    """One ``serfbridge run`` process for one node."""

    def __init__(
        self,
        *,
        node: str,
        rpc_addr: str,
        kubeconfig: str,
        workdir: Path,
        cluster: str = CLUSTER,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        global_args: Sequence[str] = (),
        tuning: Sequence[str] = TUNING,
        config_text: str | None = None,
        verbose: bool = True,
    ) -> None:
        """``args`` go after ``run``, ``global_args`` before it; ``tuning`` are the fast
        loop flags (flags beat the config file: drop one to let ``config_text`` set it).
        ``verbose`` False drops ``-v``, to see errors as users do (one line, no traceback)."""
        self.node, self.rpc_addr, self.kubeconfig = node, rpc_addr, kubeconfig
        self.cluster, self.args, self.workdir = cluster, list(args), workdir
        self.global_args, self.tuning = list(global_args), list(tuning)
        self.http_port = free_port()
        self.socket = str(workdir / f"{node}.sock")
        self.log_path = workdir / f"bridge-{node}.log"
        self.config = workdir / ("empty.config" if config_text is None else f"{node}.config")
        self.config.write_text(config_text or "")
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.pids: list[int] = []
        self.verbose = verbose

    @property
    def http_addr(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def argv(self) -> list[str]:
        return [
            commands.command("serfbridge"),
            "--config",
            str(self.config),
            "--rpc-addr",
            self.rpc_addr,
            "--kubeconfig",
            self.kubeconfig,
            "--cluster-name",
            self.cluster,
            "--node-name",
            self.node,
            *(["-v"] if self.verbose else []),
            *self.global_args,
            "run",
            "--http-addr",
            self.http_addr,
            "--handler-socket",
            self.socket,
            *self.tuning,
            *self.args,
        ]

    def start(self) -> BridgeProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
        self.pids.append(self.proc.pid)
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{self.http_addr}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except OSError as exc:
            return 0, str(exc)

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        return json.loads(body) if code == 200 else {}

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.get("/readyz")[0] == 200:
                return
            if not self.running():
                raise RuntimeError(f"bridge {self.node} exited:\n{self.log_tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"bridge {self.node} not ready in {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def terminate(self, timeout: float = 10.0) -> int | None:
        if not self.running() or self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def _signal(self, signum: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            if signum == signal.SIGKILL:
                self.proc.wait(10)

    def restart(self) -> BridgeProcess:
        self.kill()
        return self.start()

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def node_body(name: str, ip: str, *, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "Hostname", "address": name},
            ],
            "conditions": [{"type": "Ready", "status": str(ready)}],
        },
    }


class World:
    """Real apiserver + N serf agents + one Node per agent (+ daemons on request)."""

    def __init__(
        self,
        n: int = 3,
        *,
        apiserver: LabApiServer | None = None,
        agent_specs: Sequence[AgentSpec] | None = None,
        cluster: str = CLUSTER,
        node_prefix: str = "k",
        bridge_kubeconfig: str | None = None,
    ) -> None:
        """``bridge_kubeconfig``: the daemons' credentials (default: the apiserver's admin;
        the RBAC tests give the ServiceAccount's). ``client`` is always the admin."""
        self.cluster = cluster
        self._own_apiserver = apiserver is None
        self.apiserver = apiserver or LabApiServer()
        self.bridge_kubeconfig = bridge_kubeconfig or str(self.apiserver.kubeconfig)
        specs = agent_specs or [AgentSpec(f"serf-{node_prefix}{i + 1}") for i in range(n)]
        self.serf = SerfCluster(specs=specs, join_timeout=45)
        self.nodes = [f"{node_prefix}{i + 1}" for i in range(len(specs))]
        self.bridges: dict[str, BridgeProcess] = {}
        self.kube: kube.KubeClient | None = None
        self._services_before: set[str] = set()

    def __enter__(self) -> World:
        try:
            if self._own_apiserver:
                self.apiserver.start()
            self.serf.start()
            self.kube = kube.load_client(str(self.apiserver.kubeconfig), env={})
            self._services_before = self._service_paths()
            for i, node in enumerate(self.nodes):
                self.create_node(node, f"10.90.0.{i + 1}")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> kube.KubeClient:
        assert self.kube is not None
        return self.kube

    def agent_for(self, node: str) -> Any:
        return self.serf.agents[self.nodes.index(node)]

    def create_node(self, name: str, ip: str, *, ready: bool = True) -> None:
        self.client.request(
            "POST",
            "/api/v1/nodes",
            verb="create",
            resource="nodes",
            body=node_body(name, ip, ready=ready),
        )

    def start_bridges(
        self,
        *,
        args: Sequence[str] = (),
        nodes: Sequence[str] | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
    ) -> None:
        for node in nodes or self.nodes:
            self.bridges[node] = self.bridge(node, args=args, env=env).start()
        if wait:
            for node in nodes or self.nodes:
                self.bridges[node].wait_ready()

    def bridge(self, node: str, **options: Any) -> BridgeProcess:
        """A (not yet started) daemon for ``node``; ``options`` as for ``BridgeProcess``."""
        return BridgeProcess(
            node=node,
            rpc_addr=self.agent_for(node).rpc_addr,
            kubeconfig=self.bridge_kubeconfig,
            workdir=self.serf.workdir,
            cluster=self.cluster,
            **options,
        )

    def cli(self, node: str, *args: str, kubeconfig: str | None = None) -> commands.Result:
        """The installed ``serfbridge`` for ``node`` (what a user runs), as a process, with
        the daemons' credentials unless ``kubeconfig`` says otherwise."""
        return commands.run(
            [
                "--config",
                "/dev/null",
                "--rpc-addr",
                self.agent_for(node).rpc_addr,
                "--kubeconfig",
                kubeconfig or self.bridge_kubeconfig,
                "--cluster-name",
                self.cluster,
                "--node-name",
                node,
                *args,
            ]
        )

    def node_metadata(self, name: str) -> tuple[dict[str, str], dict[str, str]]:
        info = self.client.get_node(name)
        return dict(info.labels), dict(info.annotations)

    def wait_for(
        self, predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition"
    ) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            time.sleep(0.1)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.logs()}")

    def _service_paths(self) -> set[str]:
        reply = self.client.request("GET", "/api/v1/services", verb="list", resource="services")
        return {
            f"/api/v1/namespaces/{item['metadata']['namespace']}/services/"
            f"{item['metadata']['name']}"
            for item in reply.get("items", [])
        }

    def logs(self, lines: int = 30) -> str:
        parts = [f"--- bridge {n} ---\n{b.log_tail(lines)}" for n, b in self.bridges.items()]
        return "\n".join(parts) + "\n" + self.serf.logs(lines)

    def close(self) -> None:
        for bridge in self.bridges.values():
            bridge.terminate(timeout=5)
            bridge.kill()
        if self.kube is not None:
            if not self._own_apiserver:  # a shared apiserver: leave no Nodes behind
                for node in self.nodes:
                    with contextlib.suppress(Exception):
                        self.client.request(
                            "DELETE", f"/api/v1/nodes/{node}", verb="delete", resource="nodes"
                        )
                # ... nor Services: a later World's bridges (all namespaces) would publish them
                with contextlib.suppress(Exception):
                    for path in self._service_paths() - self._services_before:
                        self.client.request("DELETE", path, verb="delete", resource="services")
            self.kube.close()
        self.serf.close()
        if self._own_apiserver:
            self.apiserver.stop()
