"""Issue 13, point 2: a bzip2 bomb in the gossip, measured as the review measured it.

The bomb: a ``services`` value of ~130 characters that decompresses to 1 MiB of
``[{},{},...]``. Figures, each next to a plain decode (a real two-entry list) as baseline:

1. one bomb decode in a fresh process: wall time and peak RSS;
2. ``serfbridge services`` against real agents with two bomb members: wall time, peak
   RSS of the process, lines printed;
3. a real bridge (``serfbridge run``, real apiserver) with bomb members in the gossip,
   claiming Nodes: CPU seconds per 30 s and RSS;
4. one ``plan_publish`` pass with bomb lists on eligible Nodes' members (first pass, then
   a steady one: results are cached by value).

Review figures before the fix: 14.8 s / 357 MiB / 2.4 M warnings (1); 67 s / 1.15 GB /
4.9 M lines (2); 17 s CPU per 30 s, ~400 MiB (3); 81 s (4).
"""

from __future__ import annotations

import base64
import bz2
import os
import subprocess
import sys
import tempfile
import time

from serfbridge import cloudy_codec
from serfbridge.cloudy import SERVICES_TAG, Entry, encode_services
from serfbridge.kubemodels import NodeInfo, ServiceInfo, ServicePort
from serfbridge.plan_publish import PublishSettings, plan_publish
from serfbridge.rpc.client import SerfClient
from serfbridge.rpc.models import Member
from tests.lab.bridges import World
from tests.lab.serfagents import AgentSpec, SerfCluster

BOMB = base64.b64encode(bz2.compress(b"[" + b"{}," * 349_525 + b"{}]", 9)).decode()
PLAIN = encode_services(
    [
        Entry("serf", "SERF_instance_running", "n1.guifi.local", "10.0.0.1", "5000", "lab", ""),
        Entry("kubernetes", "apps_web", "n1.guifi.local", "10.0.0.1", "30080", "lab", "x=1"),
    ]
)
WINDOW_S = 30.0


# The child reports its own peak RSS (VmHWM) at exit: wait4's ru_maxrss would count the
# RSS the child inherited from this (big) process at fork, before exec.
_REPORT_HWM = (
    "import atexit,os\n"
    "def _hwm():\n"
    "    with open('/proc/self/status') as s, open(os.environ['BENCH_HWM'], 'w') as out:\n"
    "        out.write(next(l for l in s if l.startswith('VmHWM:')).split()[1])\n"
    "atexit.register(_hwm)\n"
)


def run_measured(argv: list[str]) -> tuple[float, int, str]:
    """(wall seconds, peak RSS KiB, stdout+stderr) of ``python -c CODE ARGS`` in a child."""
    with tempfile.NamedTemporaryFile("r") as hwm:
        code, args = argv[0], argv[1:]
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _REPORT_HWM + code, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={**os.environ, "BENCH_HWM": hwm.name},
            check=False,
        )
        elapsed = time.perf_counter() - start
        peak = int(hwm.read() or 0)
    return elapsed, peak, proc.stdout.decode("utf-8", "replace")


def median_run(argv: list[str], runs: int = 5) -> tuple[float, int, str]:
    """The run with the median wall time of ``runs`` (a shared, loaded machine)."""
    results = sorted((run_measured(argv) for _ in range(runs)), key=lambda r: r[0])
    return results[runs // 2]


def decode_in_fresh_process(value: str) -> tuple[float, int, str]:
    code = (
        "import sys,time;from serfbridge.cloudy import decode_members as d;"
        "t=time.perf_counter();r,w=d([('m','alive',{'services':sys.argv[1]})]);"
        "print(f'{time.perf_counter()-t:.6f}',len(r),len(w))"
    )
    return run_measured([code, value])


def figure_1() -> None:
    _, plain_rss, plain_out = decode_in_fresh_process(PLAIN)
    _, bomb_rss, bomb_out = decode_in_fresh_process(BOMB)
    plain_s, bomb_s = float(plain_out.split()[0]), float(bomb_out.split()[0])
    print(f"1. bomb ({len(BOMB)} chars) decode: {bomb_s * 1000:.2f} ms, peak RSS "
          f"{bomb_rss / 1024:.1f} MiB, warnings {bomb_out.split()[2]}  |  plain decode: "
          f"{plain_s * 1000:.2f} ms, peak RSS {plain_rss / 1024:.1f} MiB  |  ratio time "
          f"{bomb_s / plain_s:.1f}x, RSS {bomb_rss / plain_rss:.2f}x")  # fmt: skip


def figure_2() -> None:
    with SerfCluster(3) as cluster:
        for name in ("n1", "n2"):
            with SerfClient(cluster.agent(name).rpc_addr) as c:
                c.tags({SERVICES_TAG: BOMB})
        cluster.wait_for(
            lambda: sum("services" in m["Tags"] for m in cluster.members("n3")) == 2,
            timeout=10,
            what="bombs gossiped",
        )
        argv = ["from serfbridge.cli import cli; cli()", "--config", "/dev/null", "--rpc-addr",
                cluster.agent("n3").rpc_addr, "services"]  # fmt: skip
        bomb_s, bomb_rss, out = median_run(argv)
        for name in ("n1", "n2"):
            with SerfClient(cluster.agent(name).rpc_addr) as c:
                c.tags({SERVICES_TAG: PLAIN})
        time.sleep(2)
        plain_s, plain_rss, plain_out = median_run(argv)
    print(f"2. `serfbridge services`, two bomb members: {bomb_s:.2f} s, peak RSS "
          f"{bomb_rss / 1024:.1f} MiB, {len(out.splitlines())} lines  |  two plain members: "
          f"{plain_s:.2f} s, {plain_rss / 1024:.1f} MiB, {len(plain_out.splitlines())} lines  "
          f"|  ratio time {bomb_s / plain_s:.2f}x, RSS {bomb_rss / plain_rss:.2f}x")  # fmt: skip
    print("   bomb run printed:", *out.splitlines(), sep="\n     ")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def bridge_window(w: World) -> tuple[float, int, int]:
    pid = w.bridges[w.nodes[0]].proc.pid  # type: ignore[union-attr]
    before = cpu_seconds(pid)
    time.sleep(WINDOW_S)
    return cpu_seconds(pid) - before, rss_kib(pid), rss_kib(pid, "VmHWM")


def figure_3() -> None:
    with World(2) as w:
        w.start_bridges()
        plain = bridge_window(w)
        for i, node in enumerate(w.nodes):
            agent = w.serf.add_agent(AgentSpec(f"0000-bomb{i}"))
            with SerfClient(agent.rpc_addr) as c:
                c.tags({"k8s": f"lab/{node}", SERVICES_TAG: BOMB})
        bombed = bridge_window(w)
        _, status = w.bridges[w.nodes[0]].get("/readyz")
        # The bomb on a real Node's own agent: every peer's placement reads that list.
        with SerfClient(w.agent_for(w.nodes[1]).rpc_addr) as c:
            c.tags({SERVICES_TAG: BOMB})
        on_node = bridge_window(w)
        _, status_node = w.bridges[w.nodes[0]].get("/readyz")
    print(f"3. bridge, two bomb members (claiming the Nodes) in the gossip: {bombed[0]:.2f} s "
          f"CPU per {WINDOW_S:.0f} s, RSS {bombed[1] / 1024:.1f} MiB (peak "
          f"{bombed[2] / 1024:.1f}), readyz {status}  |  and a bomb on the other Node's own "
          f"agent: {on_node[0]:.2f} s CPU, RSS {on_node[1] / 1024:.1f} MiB (peak "
          f"{on_node[2] / 1024:.1f}), readyz {status_node}  |  without bombs: {plain[0]:.2f} s "
          f"CPU, RSS {plain[1] / 1024:.1f} MiB")  # fmt: skip


def figure_4() -> None:
    nodes = {f"k{i}": NodeInfo(f"k{i}", f"k{i}", {}, {}, (("InternalIP", f"10.0.0.{i}"),), True)
             for i in range(1, 4)}  # fmt: skip
    services = {
        f"default/s{i}": ServiceInfo("default", f"s{i}", f"s{i}", "NodePort",
                                     (ServicePort("http", 80, 30000 + i, "TCP"),), None, {}, {}, ())
        for i in range(20)
    }  # fmt: skip

    def members(value: str) -> list[Member]:
        return [Member(f"serf-k{i}", f"10.0.0.{i}", 7946,
                       {"k8s": f"lab/k{i}", **({SERVICES_TAG: value} if i > 1 else {})}, "alive")
                for i in range(1, 4)]  # fmt: skip

    settings = PublishSettings(self_node="k1", cluster="lab", self_member="serf-k1")

    def one_pass(value: str) -> float:
        start = time.perf_counter()
        plan_publish(services=services, slices={}, nodes=nodes, members=members(value),
                     current_tags={}, settings=settings)  # fmt: skip
        return time.perf_counter() - start

    cloudy_codec._CACHE.clear()
    plain_first, plain_steady = one_pass(PLAIN), one_pass(PLAIN)
    cloudy_codec._CACHE.clear()
    bomb_first, bomb_steady = one_pass(BOMB), one_pass(BOMB)
    print(f"4. plan_publish, bombs on 2 of 3 eligible members, 20 Services: first pass "
          f"{bomb_first * 1000:.1f} ms, steady {bomb_steady * 1000:.1f} ms  |  plain lists: "
          f"first {plain_first * 1000:.1f} ms, steady {plain_steady * 1000:.1f} ms  |  ratio "
          f"{bomb_first / plain_first:.2f}x first, "
          f"{bomb_steady / plain_steady:.2f}x steady")  # fmt: skip


def main() -> None:
    figure_1()
    figure_4()
    figure_2()
    figure_3()


if __name__ == "__main__":
    main()
