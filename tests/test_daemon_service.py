"""``serfbridge run`` as a service: sd_notify, health, metrics, signals, secrets in logs.

Real parts only: the lab apiserver, real serf agents and the daemon as a subprocess
(``BridgeProcess``). systemd is played by a datagram socket on ``NOTIFY_SOCKET``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.lab.apiserver import LabApiServer
from tests.lab.bridges import BridgeProcess, World
from tests.lab.serfagents import AgentSpec

pytestmark = pytest.mark.integration

WATCHDOG_SEC = 30.0  # systemd/serfbridge.service
#: Issue 7 names these; serfbridge/health.py defines them (counters without ``_total``).
METRICS = {
    "serfbridge_last_sync_timestamp_seconds": "gauge",
    "serfbridge_writes": "counter",
    "serfbridge_errors": "counter",
    "serfbridge_tag_budget_bytes": "gauge",
    "serfbridge_entries_not_published": "gauge",
    "serfbridge_rpc_connected": "gauge",
    "serfbridge_kube_synced": "gauge",
    "serfbridge_events_dropped": "counter",
}


class NotifySocket:
    """What systemd does for Type=notify: a datagram socket, every message time-stamped."""

    def __init__(self, directory: Path) -> None:
        if len(str(directory)) > 80:  # sun_path holds 107 bytes
            directory = Path(tempfile.mkdtemp(prefix="sbn-"))
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, message: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == message]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        os.unlink(self.path)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[NotifySocket]:
    ns = NotifySocket(tmp_path)
    yield ns
    ns.close()


def wait_until(
    predicate: Callable[[], object], timeout: float, what: str, b: BridgeProcess
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{b.log_tail(60)}")


def sigterm(b: BridgeProcess) -> tuple[int | None, float]:
    """SIGTERM, then the exit code and the seconds it took (waits at most 15 s)."""
    assert b.proc is not None
    start = time.monotonic()
    b.proc.send_signal(signal.SIGTERM)
    try:
        code: int | None = b.proc.wait(15)
    except Exception:
        code = None
    return code, time.monotonic() - start


def metrics(b: BridgeProcess) -> dict[str, object]:
    code, text = b.get("/metrics")
    assert code == 200, text
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict[str, object], name: str, sample_name: str, **labels: str) -> float:
    family = families[name]
    for s in family.samples:  # type: ignore[attr-defined]
        if s.name == sample_name and s.labels == labels:
            return float(s.value)
    raise AssertionError(f"no sample {sample_name}{labels}")


def writes_to_serf(b: BridgeProcess) -> float:
    return sample(metrics(b), "serfbridge_writes", "serfbridge_writes_total", direction="to-serf")


@pytest.fixture
def private_world(private_apiserver: LabApiServer) -> Iterator[World]:
    w = World(1, apiserver=private_apiserver, node_prefix="pw")
    w.__enter__()
    yield w
    private_apiserver.start_apiserver()  # World.close deletes its Nodes
    w.close()


# --- 1. sd_notify: READY=1 after the first sync, WATCHDOG=1 at intervals, STOPPING=1 ----


def test_ready_only_after_first_sync_then_watchdog_and_stopping(
    private_world: World, private_apiserver: LabApiServer, notify_socket: NotifySocket
) -> None:
    w = private_world
    node = w.nodes[0]
    private_apiserver.stop_apiserver()  # the daemon starts while Kubernetes is away
    b = w.bridges[node] = w.bridge(node, env={"NOTIFY_SOCKET": notify_socket.path}).start()
    wait_until(lambda: b.get("/healthz")[0] == 200, 60, "/healthz", b)

    # Several watchdog pings while not ready, and not one READY=1.
    wait_until(lambda: len(notify_socket.times("WATCHDOG=1")) >= 5, 60, "watchdog pings", b)
    code, body = b.get("/readyz")
    assert code == 503, body
    assert b.status()["ready"] is False
    assert notify_socket.times("READY=1") == []
    time.sleep(3)  # give a wrong READY=1 time to show up
    assert notify_socket.times("READY=1") == []
    assert b.get("/readyz")[0] == 503

    restarted = time.monotonic()
    private_apiserver.start_apiserver()
    wait_until(lambda: notify_socket.times("READY=1"), 90, "READY=1", b)
    ready_at = notify_socket.times("READY=1")[0]
    assert ready_at > restarted
    status = b.status()
    assert status["ready"] is True
    assert {"to-k8s", "to-serf"} <= set(status["last_sync"])  # both passes done before READY
    assert b.get("/readyz")[0] == 200

    # WATCHDOG=1 keeps coming after READY=1, well inside WatchdogSec/2.
    wait_until(lambda: len([t for t in notify_socket.times("WATCHDOG=1") if t > ready_at]) >= 8,
               60, "watchdog pings after READY", b)  # fmt: skip
    pings = notify_socket.times("WATCHDOG=1")
    gaps = [b2 - a for a, b2 in itertools.pairwise(pings)]
    print(f"watchdog: {len(pings)} pings, max gap {max(gaps):.2f}s, "
          f"mean {sum(gaps) / len(gaps):.2f}s; READY=1 {ready_at - restarted:.1f}s "
          "after the apiserver came back")  # fmt: skip
    assert max(gaps) < WATCHDOG_SEC / 2
    assert len(notify_socket.times("READY=1")) == 1

    code, took = sigterm(b)
    print(f"SIGTERM -> exit {code} in {took:.2f}s")
    assert code == 0, b.log_tail()
    assert took < 5.0
    assert notify_socket.times("STOPPING=1"), notify_socket.messages[-5:]


# --- 2. /readyz follows the apiserver --------------------------------------------------


def test_readyz_503_while_apiserver_stopped_and_200_after(
    private_world: World, private_apiserver: LabApiServer
) -> None:
    w = private_world
    node = w.nodes[0]
    b = w.bridges[node] = w.bridge(node).start()
    b.wait_ready(90)
    assert b.proc is not None
    pid = b.proc.pid

    private_apiserver.stop_apiserver()
    wait_until(lambda: b.get("/readyz")[0] == 503, 60, "/readyz 503 with the apiserver down", b)
    code, body = b.get("/readyz")
    assert code == 503 and "kubernetes" in body, body
    assert b.get("/healthz")[0] == 200  # alive, just not ready
    down = metrics(b)
    assert sample(down, "serfbridge_kube_synced", "serfbridge_kube_synced") == 0.0

    private_apiserver.start_apiserver()
    wait_until(lambda: b.get("/readyz")[0] == 200, 90, "/readyz 200 after the apiserver is back", b)
    assert b.running() and b.proc.pid == pid  # recovered by itself, no restart
    up = metrics(b)
    assert sample(up, "serfbridge_kube_synced", "serfbridge_kube_synced") == 1.0

    # SIGTERM during an outage is as quick and clean as in steady state.
    private_apiserver.stop_apiserver()
    wait_until(lambda: b.get("/readyz")[0] == 503, 60, "/readyz 503 again", b)
    time.sleep(2)  # let the watchers sit in their retry loops
    code, took = sigterm(b)
    print(f"SIGTERM during apiserver outage -> exit {code} in {took:.2f}s")
    assert code == 0, b.log_tail()
    assert took < 5.0


# --- 3. /metrics ------------------------------------------------------------------------


def test_metrics_parse_name_everything_and_count_a_new_service(world, kube_objects) -> None:
    w: World = world(2)
    w.start_bridges()
    for node, b in w.bridges.items():
        families = metrics(b)
        for name, kind in METRICS.items():
            assert name in families, f"{node}: {name} missing"
            assert families[name].type == kind, name  # type: ignore[attr-defined]
        assert sample(families, "serfbridge_rpc_connected", "serfbridge_rpc_connected") == 1.0
        assert sample(families, "serfbridge_kube_synced", "serfbridge_kube_synced") == 1.0
        for direction in ("to-serf", "to-k8s"):
            name = "serfbridge_last_sync_timestamp_seconds"
            last = sample(families, name, name, direction=direction)
            assert abs(time.time() - last) < 120
        assert sample(families, "serfbridge_tag_budget_bytes", "serfbridge_tag_budget_bytes",
                      state="limit") == 512  # fmt: skip
    w.wait_for(lambda: all(b.status().get("ready") for b in w.bridges.values()), what="ready")
    before = {node: writes_to_serf(b) for node, b in w.bridges.items()}

    name = kube_objects.name("metrics")
    kube_objects.create_service(name)  # NodePort, default namespace; replicas 2 of 2 nodes
    tag = f"k8s=lab/default/{name}/80"

    def publishers() -> list[str]:
        return [
            node for node, b in w.bridges.items()
            if any(e.get("t") == tag for e in b.status().get("publishes") or [])
        ]  # fmt: skip

    w.wait_for(lambda: len(publishers()) == 2, timeout=30, what="both nodes publish it")
    for node in publishers():
        b = w.bridges[node]
        w.wait_for(lambda b=b, node=node: writes_to_serf(b) > before[node], timeout=30,
                   what=f"writes_total to-serf on {node}")  # fmt: skip
        families = metrics(b)
        used = sample(families, "serfbridge_tag_budget_bytes", "serfbridge_tag_budget_bytes",
                      state="used")  # fmt: skip
        assert 0 < used <= 512


# --- 4. SIGTERM and SIGHUP --------------------------------------------------------------


def test_sigterm_exits_within_5s_with_code_0(world, notify_socket: NotifySocket) -> None:
    w: World = world(1)
    w.start_bridges(env={"NOTIFY_SOCKET": notify_socket.path})
    b = w.bridges[w.nodes[0]]
    wait_until(lambda: notify_socket.times("READY=1"), 60, "READY=1", b)
    time.sleep(1)
    code, took = sigterm(b)
    print(f"SIGTERM (steady state) -> exit {code} in {took:.2f}s")
    assert code == 0, b.log_tail()
    assert took < 5.0
    assert notify_socket.times("STOPPING=1")
    assert "serfbridge stopped" in b.log_text()
    assert not Path(b.socket).exists()  # the handler socket is cleaned up


def test_sighup_applies_new_resync_without_restart(world) -> None:
    w: World = world(1)
    node = w.nodes[0]
    b = w.bridges[node] = w.bridge(
        node, tuning=("--debounce", "0.1", "--max-wait", "1"),
        config_text="# site settings\nSERFBRIDGE_RESYNC=300\n",
    ).start()  # fmt: skip
    b.wait_ready(60)
    assert b.status()["resync"] == 300
    assert b.proc is not None
    pid = b.proc.pid

    b.config.write_text('# site settings\nexport SERFBRIDGE_RESYNC="2"\n')
    b.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: b.status().get("resync") == 2, 30, "resync 2 in /status", b)
    assert "SIGHUP: config reloaded (resync 2s" in b.log_text()

    # Behaviour, not just the number: passes now come every ~2 s, with no event at all.
    seen: list[float] = []

    def new_pass() -> bool:
        last = b.status().get("last_sync", {}).get("to-k8s")
        if last is not None and last not in seen:
            seen.append(last)
        return len(seen) >= 5

    wait_until(new_pass, 30, "a to-k8s pass every ~2 s", b)
    gaps = [y - x for x, y in itertools.pairwise(seen[1:])]
    print(f"after SIGHUP: to-k8s passes every {[round(g, 2) for g in gaps]} s")
    assert max(gaps) < 6

    assert b.running() and b.proc.pid == pid and b.pids == [pid]

    # A broken file on SIGHUP keeps the old settings and the process.
    b.config.write_text("SERFBRIDGE_NO_SUCH_KEY=1\n")
    b.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: "config not reloaded" in b.log_text(), 30, "reload refusal logged", b)
    assert "no.config" not in b.log_text() and f"{b.config}:1" in b.log_text()
    assert b.running() and b.status()["resync"] == 2


# --- 6. the RPC key never reaches the log -------------------------------------------------


def say_garbage_to(b: BridgeProcess) -> None:
    """Unparsable input on the handler socket: the daemon logs it at DEBUG (under -v)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(b.socket)
        s.sendall(b"{not json\n")
        s.recv(16)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_log_never_contains_the_rpc_key(world, tmp_path: Path, log_format: str) -> None:
    key = "s3cr3t-" + os.urandom(8).hex()
    wrong = "wr0ng-" + os.urandom(8).hex()
    w: World = world(1, agent_specs=[AgentSpec(f"serf-secret-{log_format}", rpc_auth=key)])
    node = w.nodes[0]
    key_file = tmp_path / "rpc-auth"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    global_args = ["--rpc-auth-file", str(key_file), "--log-format", log_format]  # -v is on
    b = w.bridges[node] = w.bridge(node, global_args=global_args).start()
    b.wait_ready(60)
    assert b.proc is not None
    say_garbage_to(b)
    wait_until(lambda: "handler socket:" in b.log_text(), 30, "a DEBUG line", b)
    b.proc.send_signal(signal.SIGHUP)  # re-reads the key file
    wait_until(lambda: "config reloaded" in b.log_text(), 30, "reload", b)
    w.agent_for(node).restart()  # the client re-dials and re-authenticates
    wait_until(lambda: "re-established" in b.log_text(), 60, "reconnect logged", b)
    b.wait_ready(60)
    assert sigterm(b)[0] == 0

    # The failure path: a wrong key is refused, and neither key is logged.
    key_file.write_text(wrong + "\n")
    b.start()
    wait_until(lambda: "authentication failed" in b.log_text(), 60, "auth failure logged", b)
    wait_until(lambda: b.get("/readyz")[0] == 503, 30, "/readyz 503 with a wrong key", b)
    assert sigterm(b)[0] == 0

    text = b.log_text()
    assert "debug" in text.lower() and "authentication failed" in text
    assert key not in text and wrong not in text
    assert key not in " ".join(b.argv())  # never on our command line either
    if log_format == "json":
        for line in text.splitlines():
            entry = json.loads(line)
            assert {"ts", "level", "logger", "msg"} <= set(entry), line
