"""A lab network: hosts in network namespaces, a mesh and a mgmt switch, link faults.

Role: test infrastructure for ``tests/test_lab_network.py`` (issue 14), not product code;
it must not import pytest and must leave nothing behind. Layout, all inside namespaces
this module creates (named ``sb<pid><n>-...``) and deletes:

* a switch namespace with two Linux bridges, ``mesh`` and ``mgmt``;
* per host a namespace with a ``mesh`` veth (10.99.0.i/24, Serf gossip) and a ``mgmt``
  veth (10.99.1.i/24, the Kubernetes API), each plugged into its bridge;
* an ``api`` namespace on mgmt (10.99.1.254) running etcd and kube-apiserver.

Loopback is per namespace, so every host's agent keeps its RPC at 127.0.0.1:7373 and its
daemon its default health port; Unix sockets are not, so each daemon gets its own handler
socket path. The test process reaches the apiserver through a relay on its own loopback
whose upstream socket is made inside the api namespace (setns(2) on a short-lived thread),
and daemons' HTTP the same way (``tests.lab.netns_io``): no lab address leaves the lab.

Faults: ``loss`` (iptables ``statistic`` drops on arrival in the host's namespace; this
kernel has no netem), ``cut``/``heal`` (the switch side of a link down/up), ``partition``
(iptables drops between groups). ``close`` kills every process started here and deletes
the namespaces, which removes the veths and bridges with them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.lab import commands
from tests.lab.apiserver import LabApiServer
from tests.lab.bridges import CLUSTER, TUNING, node_body
from tests.lab.errors import LabError
from tests.lab.netns_io import Relay, ns_http_get, sh

MESH_NET, MGMT_NET = "10.99.0", "10.99.1"
API_IP = f"{MGMT_NET}.254"
RPC_ADDR = "127.0.0.1:7373"
HTTP_PORT = 9473
_counter = iter(range(1000))


class NetApiServer(LabApiServer):
    """etcd + kube-apiserver in the lab's api namespace, listening on mgmt (API_IP)."""

    def __init__(self, ns: str) -> None:
        super().__init__()
        self.ns = ns
        self.argv_prefix = ("ip", "netns", "exec", ns)
        self._relay: Relay | None = None

    @property
    def url(self) -> str:  # what the test process uses (kubeconfig)
        assert self._relay is not None
        return f"https://127.0.0.1:{self._relay.local_port}"

    @property
    def mgmt_kubeconfig(self) -> Path:
        """The admin kubeconfig as a host sees it: the apiserver over mgmt."""
        path = self.dir / "kubeconfig-mgmt"
        config = json.loads(self.kubeconfig.read_text())
        config["clusters"][0]["cluster"]["server"] = f"https://{API_IP}:{self.port}"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def start(self) -> NetApiServer:
        self._relay = Relay(self.ns, self.port)
        certs = self.dir / "certs"
        certs.mkdir(parents=True, exist_ok=True)
        # kube-apiserver keeps a cert it finds in --cert-dir: one valid on both addresses.
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
           "-subj", "/CN=lab-apiserver", "-keyout", str(certs / "apiserver.key"),
           "-out", str(certs / "apiserver.crt"),
           "-addext", f"subjectAltName=IP:127.0.0.1,IP:{API_IP},DNS:localhost")  # fmt: skip
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        if self._relay is not None:
            self._relay.close()

    def _apiserver_argv(self) -> list[str]:
        swap = {"--bind-address=127.0.0.1": "--bind-address=0.0.0.0",
                "--advertise-address=127.0.0.1": f"--advertise-address={API_IP}"}  # fmt: skip
        return [swap.get(a, a) for a in super()._apiserver_argv()]

    def _etcd_ready(self) -> bool:
        status, body = ns_http_get(self.ns, self.etcd_port, "/health")
        return status == 200 and '"true"' in body


class Host:
    """One lab host: its namespace, addresses, serf agent and serfbridge daemon."""

    def __init__(self, net: LabNet, index: int) -> None:
        self.net, self.index = net, index
        self.name = f"n{index}"
        self.ns = f"{net.tag}-{self.name}"
        self.mesh_ip, self.mgmt_ip = f"{MESH_NET}.{index}", f"{MGMT_NET}.{index}"
        self.serf_port = 7946
        self.member = f"serf-{self.name}"
        self.agent: subprocess.Popen[bytes] | None = None
        self.bridge: subprocess.Popen[bytes] | None = None
        self.agent_log = net.workdir / f"agent-{self.name}.log"
        self.bridge_log = net.workdir / f"bridge-{self.name}.log"
        self.settled_patches: dict[str, int] = {}  # tests: Node -> patches logged so far
        self.settled_offset = 0  # tests: how much of the bridge log predates the settle

    def exec(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns, *argv, check=check)

    def _spawn(self, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as out:
            out.write(f"--- netns: {' '.join(argv)}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.net.procs.append(proc)
        return proc

    # --- serf -------------------------------------------------------------------------

    def start_agent(self) -> None:
        """A lab agent: LAN profile, retrying to join every other host."""
        peers = [f"-retry-join={h.mesh_ip}:{h.serf_port}" for h in self.net.hosts if h is not self]
        argv = ["serf", "agent", f"-node={self.member}", f"-bind={self.mesh_ip}:{self.serf_port}",
                f"-rpc-addr={RPC_ADDR}", "-retry-interval=1s", "-log-level=info",
                f"-config-file={self.net.serf_config}", *peers]  # fmt: skip
        self._run_agent(argv)

    def start_cloudy_agent(self, join: Host | None) -> None:
        """As Cloudy's /etc/init.d/serf starts it (reference/cloudy-avahi-ps.md): protocol 4,
        WAN profile, port 5000, and a member name with ``date +%N`` in it, new at each start.
        """
        self.serf_port = 5000
        host_id = hashlib.md5(f"host-{self.net.tag}-{self.name}".encode()).hexdigest()
        nanos = time.time_ns() % 1_000_000_000
        self.member = f"{host_id}-{nanos:09d}-{self.name}-{self.mesh_ip}:5000"
        argv = ["serf", "agent", "-protocol", "4", f"-node={self.member}",
                f"-bind={self.mesh_ip}:5000", f"-rpc-addr={RPC_ADDR}", "-profile=wan"]  # fmt: skip
        if join is not None:
            argv += ["-join", f"{join.mesh_ip}:5000"]
        self._run_agent(argv)

    def _run_agent(self, argv: list[str]) -> None:
        self.agent = self._spawn(argv, self.agent_log)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.agent.poll() is not None:
                raise LabError(f"agent {self.name} exited:\n{self.log_tail(self.agent_log)}")
            if self.exec("serf", "info", f"-rpc-addr={RPC_ADDR}", check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise LabError(f"agent {self.name} not answering:\n{self.log_tail(self.agent_log)}")

    def stop_agent(self) -> None:
        _stop(self.agent)

    def members(self) -> dict[str, dict[str, Any]]:
        """This host's agent's view: member name -> its JSON (status, addr, tags)."""
        done = self.exec("serf", "members", "-format=json", f"-rpc-addr={RPC_ADDR}", check=False)
        if done.returncode != 0:
            return {}
        return {m["name"]: m for m in json.loads(done.stdout)["members"]}

    def tags(self) -> dict[str, str]:
        done = self.exec("serf", "info", "-format=json", f"-rpc-addr={RPC_ADDR}")
        return dict(json.loads(done.stdout)["tags"])

    # --- serfbridge -------------------------------------------------------------------

    def start_bridge(self, args: Sequence[str] = ()) -> None:
        argv = [commands.command("serfbridge"), "--config", str(self.net.empty_config),
                "--rpc-addr", RPC_ADDR, "--kubeconfig", str(self.net.host_kubeconfig),
                "--cluster-name", CLUSTER, "--node-name", self.name, "-v", "run",
                "--handler-socket", str(self.net.workdir / f"{self.name}.sock"),
                *TUNING, *args]  # fmt: skip
        self.bridge = self._spawn(argv, self.bridge_log)

    def http(self, path: str) -> tuple[int, str]:
        return ns_http_get(self.ns, HTTP_PORT, path)

    def wait_bridge_ready(self, timeout: float = 40.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.http("/readyz")[0] == 200:
                return
            if self.bridge is None or self.bridge.poll() is not None:
                raise LabError(f"bridge {self.name} exited:\n{self.log_tail(self.bridge_log)}")
            time.sleep(0.2)
        raise LabError(f"bridge {self.name} not ready:\n{self.log_tail(self.bridge_log)}")

    def metric(self, name: str) -> float:
        """The first sample of ``name`` (with its labels, as printed) or -1 if missing."""
        _, text = self.http("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return -1.0

    def log_text(self) -> str:
        try:
            return self.bridge_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @staticmethod
    def log_tail(path: Path, lines: int = 30) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


class LabNet:
    """The whole lab: use as a context manager; ``close`` also runs after a failure."""

    def __init__(self, n: int, *, serf_reconnect: str = "2s") -> None:
        self.tag = f"sb{os.getpid() % 100000}{next(_counter)}"
        self.switch, self.api_ns = f"{self.tag}-sw", f"{self.tag}-api"
        self.workdir = Path(tempfile.mkdtemp(prefix="serfbridge-net-"))
        self.empty_config = self.workdir / "empty.config"
        self.empty_config.write_text("")
        # Serf retries failed members every reconnect_interval (30 s by default); shorter,
        # so a healed link is found within the test's time. Everything else is serf's.
        self.serf_config = self.workdir / "serf.json"
        self.serf_config.write_text(json.dumps({"reconnect_interval": serf_reconnect}))
        self.namespaces: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.hosts = [Host(self, i + 1) for i in range(n)]
        self.apiserver: NetApiServer | None = None
        self.kube: Any = None
        self._size = n

    def __enter__(self) -> LabNet:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def host(self, name: str) -> Host:
        return next(h for h in self.hosts if h.name == name)

    # --- building ---------------------------------------------------------------------

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _plug(self, ns: str, ifname: str, port: str, bridge: str, cidr: str) -> None:
        """A veth from ``ns`` (named ``ifname``, address ``cidr``) to the switch's bridge."""
        tmp = f"{self.tag}x{secrets.token_hex(2)}"[:15]
        sh("ip", "-n", self.switch, "link", "add", port, "type", "veth",
           "peer", "name", tmp, "netns", ns)  # fmt: skip
        sh("ip", "-n", ns, "link", "set", tmp, "name", ifname)
        sh("ip", "-n", ns, "addr", "add", cidr, "dev", ifname)
        sh("ip", "-n", ns, "link", "set", ifname, "up")
        sh("ip", "-n", self.switch, "link", "set", port, "master", bridge, "up")

    def build(self) -> None:
        self._add_ns(self.switch)
        for bridge in ("mesh", "mgmt"):
            sh("ip", "-n", self.switch, "link", "add", bridge, "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", bridge, "up")
        self._add_ns(self.api_ns)
        self._plug(self.api_ns, "mgmt", "api-g", "mgmt", f"{API_IP}/24")
        for h in self.hosts:
            self._add_ns(h.ns)
            self._plug(h.ns, "mesh", _port(h, "mesh"), "mesh", f"{h.mesh_ip}/24")
            self._plug(h.ns, "mgmt", _port(h, "mgmt"), "mgmt", f"{h.mgmt_ip}/24")
            h.exec("iptables", "-N", "LABIN")
            h.exec("iptables", "-A", "INPUT", "-j", "LABIN")

    def start_apiserver(self) -> None:
        from serfbridge import kube

        self.apiserver = NetApiServer(self.api_ns)
        self.apiserver.start()
        self.kube = kube.load_client(str(self.apiserver.kubeconfig), env={})
        self.host_kubeconfig = self.apiserver.mgmt_kubeconfig
        for h in self.hosts:
            self.kube.request("POST", "/api/v1/nodes", verb="create", resource="nodes",
                              body=node_body(h.name, h.mesh_ip))  # fmt: skip

    def start(
        self, *, bridges: bool = True, bridge_args: Sequence[str] = (), cloudy: bool = False
    ) -> None:
        """Apiserver, agents (joined; Cloudy's way with ``cloudy``), one daemon per host."""
        self.start_apiserver()
        for i, h in enumerate(self.hosts):
            if cloudy:
                h.start_cloudy_agent(self.hosts[0] if i else None)
            else:
                h.start_agent()
        self.wait_for(self.all_see_all_alive, 60, "every agent sees every member alive")
        if bridges:
            for h in self.hosts:
                h.start_bridge(bridge_args)
            for h in self.hosts:
                h.wait_bridge_ready()

    # --- faults -----------------------------------------------------------------------

    def loss(self, share: float) -> None:
        """Lose ``share`` of the packets each way on every host's mesh link.

        Drops happen on arrival only: a DROP in OUTPUT hands the sender EPERM, and
        memberlist treats a failed send as its own error, not as a lost probe. A packet
        from A to B crosses A's link and B's, so B drops ``1 - (1 - share)²`` of what
        arrives: the same loss as ``share`` on each of the two links, independently.
        """
        p = f"{1 - (1 - share) ** 2:.4f}"
        for h in self.hosts:
            stat = ["-m", "statistic", "--mode", "random", "--probability", p, "-j", "DROP"]
            h.exec("iptables", "-A", "LABIN", "-i", "mesh", *stat)

    def clear_faults(self) -> None:
        """Remove every iptables fault (loss, partition); cut links stay cut."""
        for h in self.hosts:
            h.exec("iptables", "-F", "LABIN")

    def cut(self, host: Host, link: str = "mesh") -> None:
        sh("ip", "-n", self.switch, "link", "set", _port(host, link), "down")

    def heal(self, host: Host, link: str = "mesh") -> None:
        sh("ip", "-n", self.switch, "link", "set", _port(host, link), "up")

    def partition(self, *groups: Sequence[Host]) -> None:
        """No mesh traffic between hosts of different groups (mgmt untouched)."""
        for group in groups:
            for h in group:
                for other in self.hosts:
                    if other not in group:
                        # On arrival only (see loss); both sides drop, so neither way passes.
                        h.exec("iptables", "-A", "LABIN", "-s", other.mesh_ip, "-j", "DROP")

    # --- looking ----------------------------------------------------------------------

    def all_see_all_alive(self) -> bool:
        names = {h.member for h in self.hosts}
        for h in self.hosts:
            alive = {n for n, m in h.members().items() if m["status"] == "alive"}
            if not names <= alive:
                return False
        return True

    def node(self, name: str) -> dict[str, Any]:
        reply: dict[str, Any] = self.kube.request(
            "GET", f"/api/v1/nodes/{name}", verb="get", resource="nodes"
        )
        return reply

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{self.logs()}")

    def logs(self, lines: int = 25) -> str:
        parts = []
        for h in self.hosts:
            parts.append(f"--- bridge {h.name} ---\n{h.log_tail(h.bridge_log, lines)}")
            parts.append(f"--- agent {h.name} ---\n{h.log_tail(h.agent_log, lines)}")
        return "\n".join(parts)

    # --- teardown ---------------------------------------------------------------------

    def close(self) -> None:
        for proc in reversed(self.procs):
            _stop(proc)
        if self.kube is not None:
            self.kube.close()
        if self.apiserver is not None:
            self.apiserver.stop()
        for ns in reversed(self.namespaces):
            # Anything still inside (a child of a child) is ours: stop it by its pid.
            for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), 9)
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _port(host: Host, link: str) -> str:
    """The switch side of ``host``'s ``link`` ("mesh" or "mgmt")."""
    return f"{host.name}-{'m' if link == 'mesh' else 'g'}"


def _stop(proc: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(grace)
