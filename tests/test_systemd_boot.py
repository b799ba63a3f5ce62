"""The Debian package under a real systemd: a fresh Debian 12 booted by systemd-nspawn.

One machine per module (``tests.lab.nspawn``): a fresh copy of the cached bookworm root,
booted on the host's network. Inside it, ``apt-get install serf ./serfbridge_*.deb``
pulls Debian's own libraries from Debian's mirror; the lab kube-apiserver runs on the
host's loopback and a host serf agent joins the machine's agent. The tests run in file
order on that one machine, as an operator would go: install, configure, start, then
break things. Each test states the unit state it leaves behind.

Needs: the cached root (`make nspawn-rootfs`), the package (`make deb`, or
``SERFBRIDGE_DEB``), the apiserver (`make kube-apiserver`), systemd-container and
network access to deb.debian.org. A missing part fails, never skips.

The figures (READY delay, restart delay, stop time, exposure, stage times) are printed
at the end of the module, whatever the outcome.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import ssl
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures_kube import KubeObjects, client_for
from tests.lab.apiserver import LabApiServer
from tests.lab.errors import MachineError
from tests.lab.nspawn import BootedMachine, find_rootfs, wait_until
from tests.lab.serfagents import AgentSpec, SerfAgent, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parent.parent
UNIT = "serfbridge.service"
CLUSTER = "boot"
DEB_INSIDE = "/root/serfbridge_all.deb"
#: What the package must install (Build 3 of issue 11), and purge must take away again.
PACKAGE_FILES = (
    "/usr/bin/serfbridge",
    "/usr/bin/serfbridge-handle",
    "/usr/lib/serfbridge/serf-event-handler",
    "/lib/systemd/system/serfbridge.service",
    "/etc/serf/serfbridge.json",
)
CONFFILE = "/etc/serfbridge/config"
OPERATIONS = REPO / "docs" / "operations.md"  # its Troubleshooting quotes this module's lines
FIGURES: dict[str, str] = {}


def find_deb() -> Path:
    explicit = os.environ.get("SERFBRIDGE_DEB")
    found = [Path(explicit)] if explicit else sorted((REPO / "dist").glob("serfbridge_*_all.deb"))
    if not found or not found[-1].is_file():
        pytest.fail("no serfbridge_*_all.deb in dist/: run `make deb` (or set SERFBRIDGE_DEB)")
    return found[-1]


def figure(name: str, value: float, unit: str = "s") -> None:
    FIGURES[name] = f"{value:.2f} {unit}".strip()


@dataclass
class Boot:
    machine: BootedMachine
    lab: LabApiServer
    kube: KubeObjects
    serf_bind: str
    serf_rpc: str
    http_addr: str
    workdir: Path
    host_agents: list[SerfAgent] = field(default_factory=list)

    def state(self, unit: str = UNIT) -> dict[str, str]:
        return self.machine.show(
            unit, "ActiveState", "SubState", "Result", "MainPID", "NRestarts",
            "ExecMainStatus", "ConditionResult", "ActiveEnterTimestampMonotonic",
        )  # fmt: skip

    def expect(self, predicate: Callable[[], bool], timeout: float, what: str) -> float:
        """`wait_until`, failing with the journals attached."""
        try:
            return wait_until(predicate, timeout, what)
        except MachineError as exc:
            raise AssertionError(f"{exc}\n{self.diagnose()}") from exc

    def diagnose(self) -> str:
        serf = self.machine.journal("serf.service", 30)
        return (f"--- journal of {UNIT} ---\n{self.machine.journal(UNIT, 80)}\n"
                f"--- journal of serf.service ---\n{serf}")  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def print_figures(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is None or capture is None or not FIGURES:
        return
    with capture.global_and_fixture_disabled():  # shown on success too, not only on failure
        reporter.write_line("")
        for name, value in FIGURES.items():
            reporter.write_line(f"systemd boot figure: {name} = {value}")


@pytest.fixture(scope="module")
def boot() -> Iterator[Boot]:
    deb, rootfs = find_deb(), find_rootfs()
    name = f"sb-boot-{secrets.token_hex(3)}"
    workdir = Path(tempfile.mkdtemp(prefix="serfbridge-boot-"))
    lab = LabApiServer()
    machine = BootedMachine(name, rootfs=rootfs)
    ports = {"bind": free_port(), "rpc": free_port(), "http": free_port()}
    client = None
    agents: list[SerfAgent] = []
    try:
        lab.start()
        client = client_for(lab)
        kube = KubeObjects(client)
        kube.create_node(name)
        machine.start()
        figure("stage copy (cp -a of the cached root)", machine.timings["copy"])
        figure("stage boot (nspawn start to is-system-running)", machine.timings["boot"])
        setup = Boot(machine, lab, kube, f"127.0.0.1:{ports['bind']}",
                     f"127.0.0.1:{ports['rpc']}", f"127.0.0.1:{ports['http']}", workdir,
                     agents)  # fmt: skip
        # The host's network is shared: the machine's agent must not take ports others use.
        # Written before the install, so Debian's serf starts on these ports right away.
        agent_config = {"node_name": name, "bind": setup.serf_bind, "rpc_addr": setup.serf_rpc}
        machine.write_file("/etc/serf/lab.json", json.dumps(agent_config))
        shutil.copy(deb, machine.root / DEB_INSIDE.lstrip("/"))
        began = time.monotonic()
        machine.run(["apt-get", "-q", "update"], timeout=300)
        machine.run(["apt-get", "install", "-y", "-q", "serf", DEB_INSIDE], timeout=600)
        figure("stage install (apt-get update + install serf and the .deb)",
               time.monotonic() - began)  # fmt: skip
        checks = time.monotonic()
        yield setup
        figure("stage checks (the tests on the booted machine)", time.monotonic() - checks)
    finally:
        for agent in agents:
            agent.terminate()
        halted = time.monotonic()
        machine.close()
        figure("stage teardown (halt the machine, remove the copy)", time.monotonic() - halted)
        if client is not None:
            kube.cleanup()
            client.close()
        lab.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def kubeconfig_for_machine(lab: LabApiServer) -> str:
    """The admin kubeconfig with the CA inlined: the unit sees only its credential copy."""
    ca = base64.b64encode(lab.ca_file.read_bytes()).decode()
    return json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "lab",
        "clusters": [{"name": "lab", "cluster": {"server": lab.url,
                                                  "certificate-authority-data": ca}}],
        "users": [{"name": "admin", "user": {"token": lab.admin_token}}],
        "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "admin"}}],
    })  # fmt: skip


@pytest.mark.timeout(900)  # includes the module's boot and `apt-get install`
def test_install_without_kubeconfig_neither_fails_nor_loops(boot):
    """Fresh install: no kubeconfig yet. The unit is enabled, skipped by its condition,
    not failed, and stays that way (no restart loop)."""
    m = boot.machine
    assert not m.exists("/etc/serfbridge/kubeconfig")
    assert m.run(["systemctl", "is-enabled", UNIT]).stdout.strip() == "enabled"
    for path in (*PACKAGE_FILES, CONFFILE):
        assert m.exists(path), path
    time.sleep(6)  # three RestartSec=2 periods: a crash loop would show by now
    state = boot.state()
    assert state["ActiveState"] == "inactive", (state, boot.diagnose())
    assert state["NRestarts"] == "0", state
    assert state["ConditionResult"] == "no", state
    failed = m.run(["systemctl", "list-units", "--failed", "--plain", "--no-legend"]).stdout
    assert UNIT not in failed, failed
    # what an operator sees (docs/operations.md, Troubleshooting, quotes this line)
    skipped = (
        "was skipped because of an unmet condition check "
        "(ConditionPathExists=/etc/serfbridge/kubeconfig)"
    )
    assert skipped in m.journal(UNIT), m.journal(UNIT)
    assert skipped in OPERATIONS.read_text()


def test_ready_only_after_the_api_answers(boot):
    """Start with the apiserver down: the unit stays `activating`; start the apiserver:
    `active` follows, and not before the apiserver process even existed."""
    m, lab = boot.machine, boot.lab
    m.write_file("/etc/serfbridge/kubeconfig", kubeconfig_for_machine(lab), 0o600)
    # the operator edits the package's conffile (purge must remove it, edited or not)
    packaged = (m.root / CONFFILE.lstrip("/")).read_text()
    m.write_file(CONFFILE, packaged + "\n".join([
        f"SERFBRIDGE_CLUSTER={CLUSTER}", f"SERFBRIDGE_NODE_NAME={m.name}",
        f"SERF_RPC_ADDR={boot.serf_rpc}", f"SERFBRIDGE_HTTP_ADDR={boot.http_addr}", "",
    ]))  # fmt: skip
    lab.stop_apiserver()
    m.run(["systemctl", "start", "--no-block", UNIT])
    held = time.monotonic()
    while time.monotonic() - held < 12:
        state = boot.state()
        assert state["ActiveState"] == "activating", (state, boot.diagnose())
        time.sleep(0.5)
    assert boot.state()["NRestarts"] == "0"
    # the line docs/operations.md quotes for an unreachable API
    unreachable = "kube nodes: unavailable: list nodes: HTTPSConnectionPool(host='127.0.0.1'"
    assert unreachable in m.journal(UNIT), boot.diagnose()
    assert unreachable in OPERATIONS.read_text()
    launched = time.monotonic()
    starter = threading.Thread(target=lab.start_apiserver, name="apiserver-start")
    starter.start()
    try:
        answered = first_list_answer(lab, timeout=60)
    finally:
        starter.join()
    boot.expect(lambda: boot.state()["ActiveState"] == "active", 120, "serfbridge active")
    state = boot.state()
    entered = int(state["ActiveEnterTimestampMonotonic"]) / 1e6  # no time namespace: same clock
    assert entered > launched, (entered, launched)
    # the daemon may be served between two of our polls: allow one poll and one request
    assert entered > answered - 0.1, (entered, answered)
    figure("READY=1 after the API first answered a node list", entered - answered)
    figure("apiserver process start to its first node list answer", answered - launched)
    assert state["NRestarts"] == "0", state


def first_list_answer(lab: LabApiServer, timeout: float) -> float:
    """Poll ``GET /api/v1/nodes`` every 20 ms; the monotonic time of the first 200."""
    context = ssl.create_default_context(cafile=str(lab.ca_file))
    auth = {"Authorization": f"Bearer {lab.admin_token}"}
    request = urllib.request.Request(f"{lab.url}/api/v1/nodes?limit=1", headers=auth)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=0.5, context=context) as reply:
                if reply.status == 200:
                    return time.monotonic()
        except (OSError, ssl.SSLError):
            pass
        time.sleep(0.02)
    raise AssertionError(f"the apiserver did not answer a node list within {timeout}s")


def test_serf_and_serfbridge_are_active(boot):
    for unit in ("serf.service", UNIT):
        assert boot.state(unit)["ActiveState"] == "active", (unit, boot.diagnose())
    node = boot.kube.client.request("GET", f"/api/v1/nodes/{boot.machine.name}",
                                    verb="get", resource="nodes")  # fmt: skip
    assert node["metadata"]["labels"].get("serfbridge.io/serf-status") == "alive", node


def test_the_handler_hands_member_events_to_the_daemon(boot):
    """A host agent joins the machine's agent: serf runs the packaged handler, which
    hands the event to the daemon over its socket (the daemon logs each hand-over)."""
    join_from_host(boot)
    boot.expect(
        lambda: "event handed over by the handler: member-join" in boot.machine.journal(UNIT),
        30, "the daemon to log the handed-over member-join",
    )  # fmt: skip
    # serf logs a failing handler as "Error invoking script" and a slow one as "slow"
    serf_log = boot.machine.journal("serf.service")
    assert not re.search(r"Error invoking script|execution exceeding", serf_log), serf_log


@pytest.mark.timeout(240)
def test_the_watchdog_holds_for_two_minutes(boot):
    before = boot.state()
    assert before["ActiveState"] == "active"
    assert boot.machine.show(UNIT, "WatchdogUSec")["WatchdogUSec"] == "30s"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        now = boot.state()
        assert (now["ActiveState"], now["MainPID"], now["NRestarts"]) == (
            "active", before["MainPID"], before["NRestarts"]), (now, boot.diagnose())  # fmt: skip
        time.sleep(5)
    assert "watchdog" not in boot.machine.journal(UNIT).lower()


@pytest.mark.timeout(180)
def test_a_hung_daemon_is_restarted_by_the_watchdog(boot):
    """The watchdog is armed for real: a frozen daemon (SIGSTOP) sends no WATCHDOG=1, so
    systemd aborts it after WatchdogSec=30 and restarts it."""
    before = boot.state()
    frozen = time.monotonic()
    boot.machine.run(["systemctl", "kill", "--kill-who=main", "--signal=STOP", UNIT])
    boot.expect(lambda: restarted(boot, before), 120, "the watchdog to restart serfbridge")
    figure("watchdog restart of a frozen daemon (WatchdogSec=30)", time.monotonic() - frozen)
    assert "Watchdog timeout" in boot.machine.journal(UNIT, 50), boot.diagnose()


def restarted(boot: Boot, before: dict[str, str]) -> bool:
    now = boot.state()
    return now["ActiveState"] == "active" and now["MainPID"] not in ("0", before["MainPID"])


def test_sigkill_leads_to_a_restart(boot):
    before = boot.state()
    killed = time.monotonic()
    boot.machine.run(["systemctl", "kill", "--signal=KILL", UNIT])
    boot.expect(lambda: restarted(boot, before), 60, "serfbridge to come back after SIGKILL")
    after = boot.state()
    entered = int(after["ActiveEnterTimestampMonotonic"]) / 1e6
    figure("restart after SIGKILL to active again (RestartSec=2 included)", entered - killed)
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after


def test_stop_is_fast_and_clean(boot):
    assert boot.state()["ActiveState"] == "active"
    began = time.monotonic()
    boot.machine.run(["systemctl", "stop", UNIT], timeout=30)
    took = time.monotonic() - began
    figure("systemctl stop serfbridge", took)
    state = boot.state()
    assert took < 5.0, took
    assert (state["ActiveState"], state["Result"]) == ("inactive", "success"), state
    assert "serfbridge stopped" in boot.machine.journal(UNIT, 20)


def test_exposure_is_at_most_two(boot):
    out = boot.machine.run(["systemd-analyze", "security", "--no-pager", UNIT]).stdout
    match = re.search(r"Overall exposure level for serfbridge\.service: (\d+\.\d)", out)
    assert match, out
    score = float(match.group(1))
    FIGURES["systemd-analyze security exposure"] = match.group(1)
    assert score <= 2.0, out


def test_purge_removes_the_package_and_its_conffile(boot):
    m = boot.machine
    m.run(["systemctl", "start", UNIT])  # purge a running service, as an operator would
    m.run(["apt-get", "purge", "-y", "-q", "serfbridge"], timeout=300)
    assert m.run(["dpkg-query", "-W", "-f=${db:Status-Abbrev}", "serfbridge"],
                 check=False).stdout.strip() in ("", "un")  # fmt: skip
    for path in (*PACKAGE_FILES, CONFFILE, "/usr/lib/python3/dist-packages/serfbridge"):
        assert not m.exists(path), path
    assert not m.exists("/etc/systemd/system/multi-user.target.wants/serfbridge.service")
    assert boot.state()["ActiveState"] == "inactive"
    load = m.show(UNIT, "LoadState")["LoadState"]
    assert load == "not-found", load
    # the operator's secret is not the package's: it stays, as dpkg leaves foreign files
    assert m.exists("/etc/serfbridge/kubeconfig")
    # serf forgot the handler (postrm): a new member's event runs no missing script
    joins = serf_log_count(m, "Received event: member-join")
    join_from_host(boot)
    boot.expect(lambda: serf_log_count(m, "Received event: member-join") > joins, 30,
                "the machine's agent to see a member-join after the purge")  # fmt: skip
    time.sleep(1)  # serf logs a failed handler right after the event line
    serf_log = m.journal("serf.service")
    assert "Error invoking script" not in serf_log, serf_log
    assert boot.state("serf.service")["ActiveState"] == "active"


def serf_log_count(m: BootedMachine, text: str) -> int:
    return m.journal("serf.service", 1000).count(text)


def join_from_host(boot: Boot) -> SerfAgent:
    """A new serf agent on the host, joined to the machine's agent (a member-join there)."""
    agent = SerfAgent(AgentSpec(f"host-{secrets.token_hex(2)}"), workdir=boot.workdir,
                      peers=lambda: [boot.serf_bind])  # fmt: skip
    boot.host_agents.append(agent)
    agent.start()
    return agent


def test_machine_error_names_the_missing_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SERFBRIDGE_CACHE", str(tmp_path))
    with pytest.raises(MachineError, match="make nspawn-rootfs"):
        find_rootfs()
