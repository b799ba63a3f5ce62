"""Local users and a fake agent against the real daemon (issue 13, points 4 to 7).

Everything real but the attackers' intent: real ``serfbridge run`` processes, real serf
agents, the real apiserver, and the attackers run as the real user ``nobody``. The fake
agent (``tests.lab.fake_agent``) stands in only where the real one cannot misbehave. The
figures of points 5 and 6 are printed (``pytest -s``) as well as asserted with slack.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

from serfbridge import handoff
from tests import localusers
from tests.lab import commands
from tests.lab.bridges import BridgeProcess
from tests.lab.fake_agent import FakeAgent
from tests.lab.serfagents import AgentSpec

SHIM = commands.shim()
HANDLE = commands.command("serfbridge-handle")
HANDED = "event handed over by the handler"

GARBAGE = """
import socket, time
answers = []
for payload in [b"[]\\n", b"1\\n", b"[" * 60000, b"\\xff\\xfe\\n", b"{{" + b"x" * 70000,
                b'{{"event": "member-join\\\\n2026-12-02 13:00:00,000 INFO x: forged"}}\\n']:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect({path!r})
    try:
        sock.sendall(payload)
        answers.append(sock.recv(200)[:6])
    except OSError as exc:
        answers.append(type(exc).__name__.encode())
    sock.close()
print(answers)
"""

DRIP = """
import socket, time
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect({path!r})
print("connected", flush=True)
try:
    for _ in range(20):
        sock.sendall(b"{{")
        time.sleep(1.5)
except OSError as exc:
    print("cut off", type(exc).__name__, flush=True)
"""


def start_bridge(w, node: str, shared: Path, *, global_args=(), env=None) -> BridgeProcess:
    b = w.bridge(node, global_args=list(global_args), env=env)
    b.socket = str(shared / f"{node}.sock")  # somewhere `nobody` can reach
    w.bridges[node] = b.start()
    b.wait_ready()
    return b


def handed_over(b: BridgeProcess) -> int:
    return b.log_text().count(HANDED)


def run_shim(socket_path: str, event: str = "member-update") -> float:
    """The real event-handler shim, as serf runs it; returns its wall time."""
    env = {
        **os.environ,
        "SERF_EVENT": event,
        "SERF_SELF_NAME": "serf-x",
        "SERFBRIDGE_HANDLER_SOCKET": socket_path,
        "SERFBRIDGE_HANDLE": HANDLE,
    }
    start = time.monotonic()
    subprocess.run([SHIM], input=b"serf-k1\t127.0.0.1\t\t\n", env=env, check=True, timeout=60)
    return time.monotonic() - start


def test_the_handler_socket_survives_garbage_slow_clients_and_forged_lines(world) -> None:
    w = world(1)
    node = w.nodes[0]
    with localusers.shared_dir() as shared:
        # nobody is made the agent's user here, so its garbage gets past the uid check
        b = start_bridge(w, node, shared, global_args=["--agent-user", "nobody"])
        out = localusers.run_as("nobody", GARBAGE.format(path=b.socket))
        assert out.returncode == 0, out.stderr
        answers = out.stdout.strip()
        # Past the size limit the server answers and closes with bytes unread, so the
        # sender may see the reset first; the other four always get their error line.
        cut = ("b'error:'", "b'BrokenPipeError'", "b'ConnectionResetError'")
        assert answers.count("b'error:'") >= 4 and all(
            a.strip() in cut for a in answers.strip("[]").split(",")
        ), answers

        drip = localusers.start_as("nobody", DRIP.format(path=b.socket))
        try:
            assert drip.stdout is not None and drip.stdout.readline().strip() == "connected"
            times = []
            for _ in range(8):
                start = time.monotonic()
                assert handoff.hand_over(b.socket, "member-update", members=("serf-k1",))
                times.append(time.monotonic() - start)
                time.sleep(0.3)
            print(f"\nhand-overs next to a dripping client: max {max(times) * 1000:.1f} ms")
            assert max(times) < 0.5
            drip_out, _ = drip.communicate(timeout=30)  # it ends when the server cuts it off
        finally:
            localusers.stop(drip)
        assert "cut off" in drip_out  # its deadline ended it, not our patience

        before = handed_over(b)
        took = run_shim(b.socket)  # the real shim still hands over, and fast
        w.wait_for(lambda: handed_over(b) == before + 1, 10, "the shim's hand-over")
        assert took < 5.0, took  # a python start on a loaded host; a fallback pass takes longer

        forged = "serf-k9\n2026-12-02 13:00:00,000 INFO serfbridge.daemon: forged"
        assert handoff.hand_over(b.socket, "member-join", members=(forged,))
        w.wait_for(lambda: "serf-k9\\x0a2026" in b.log_text(), 10, "the escaped name")
        lines = b.log_text().splitlines()
        assert not [line for line in lines if line.startswith("2026-12-02 13:00:00,000 INFO")]
        assert b.running()


def test_the_handler_socket_takes_only_the_agents_user(world) -> None:
    w = world(1)
    node = w.nodes[0]
    connect = (
        "import socket\ns = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "s.settimeout(3)\ntry:\n    s.connect({path!r}); print(s.recv(20))\n"
        "except OSError as e:\n    print(type(e).__name__)"
    )
    with localusers.shared_dir() as shared:
        b = start_bridge(w, node, shared)  # the default: root and the daemon's own user
        assert stat.S_IMODE(os.stat(b.socket).st_mode) == 0o600
        assert localusers.run_as("nobody", connect.format(path=b.socket)).stdout.strip() == (
            "PermissionError"
        )
        b.terminate()

        b = start_bridge(w, node, shared, global_args=["--agent-user", "daemon"])
        assert stat.S_IMODE(os.stat(b.socket).st_mode) == 0o666
        assert localusers.run_as("nobody", connect.format(path=b.socket)).stdout.strip() == (
            "b'denied\\n'"
        )
        code = (
            "from serfbridge import handoff\n"
            f"print(handoff.hand_over({b.socket!r}, 'member-join', members=()))"
        )
        assert localusers.run_as("daemon", code).stdout.strip() == "True"
        _, metrics = b.get("/metrics")
        assert 'serfbridge_local_refusals_total{listener="handler",reason="denied"} 1.0' in metrics
        assert "refused a client of uid 65534 (nobody)" in b.log_text()


FLOOD = """
import socket, sys, time
socks = []
for i in range({count}):
    s = socket.create_connection(("127.0.0.1", {port}), timeout=5)
    s.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n")  # never the blank line
    socks.append(s)
print("open", len(socks), flush=True)
time.sleep({hold})
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_http_survives_1028_half_open_requests_from_nobody_under_1024_fds(world) -> None:
    w = world(1)
    node = w.nodes[0]
    with localusers.shared_dir() as shared:
        b = start_bridge(w, node, shared)
        assert b.proc is not None
        pid = b.proc.pid
        subprocess.run(["prlimit", f"--pid={pid}", "--nofile=1024:1024"], check=True)
        time.sleep(1)  # the first passes' own lines are not the flood's
        log_before = len(b.log_text().splitlines())
        cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
        flood = localusers.start_as("nobody", FLOOD.format(count=1028, port=b.http_port, hold=8))
        try:
            assert flood.stdout is not None
            assert flood.stdout.readline().split() == ["open", "1028"]
            latencies, handovers = [], []
            for _ in range(10):
                start = time.monotonic()
                code, body = b.get("/healthz", timeout=3)
                latencies.append(time.monotonic() - start)
                assert (code, body) == (200, "ok\n")
                start = time.monotonic()
                assert handoff.hand_over(b.socket, "member-update", members=())
                handovers.append(time.monotonic() - start)
                time.sleep(0.3)
            cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
            fds = len(os.listdir(f"/proc/{pid}/fd"))
        finally:
            localusers.stop(flood)
        new_lines = b.log_text().splitlines()[log_before:]
        lines = [line for line in new_lines if HANDED not in line]
        print(
            f"\npoint 5 after the fix: /healthz max {max(latencies) * 1000:.1f} ms "
            f"(median {sorted(latencies)[5] * 1000:.1f} ms); daemon CPU {cpu * 100:.0f} % "
            f"over the flood; hand-over max {max(handovers) * 1000:.1f} ms; "
            f"{fds} fds open; {len(lines)} line(s) logged: {lines[:5]}"
        )
        assert max(latencies) < 1.0
        assert cpu < 0.5
        assert fds < 200
        assert len(lines) <= 3
        assert b.running() and b.get("/readyz")[0] == 200


SQUATTER = """
import socket, time
server = socket.create_server(("127.0.0.1", {port}))
server.settimeout(0.2)
print("listening", flush=True)
received, dialled = 0, 0
end = time.monotonic() + {hold}
while time.monotonic() < end:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        continue
    dialled += 1
    conn.settimeout(0.5)
    try:
        while data := conn.recv(4096):
            received += len(data)
    except OSError:
        pass
    conn.close()
print("dialled", dialled, "received", received, flush=True)
"""


def test_the_rpc_key_never_reaches_a_port_squatter(world, tmp_path) -> None:
    key = "squat-test-key-0123456789"
    w = world(1, agent_specs=[AgentSpec("serf-sq1", rpc_auth=key)])
    node = w.nodes[0]
    agent = w.agent_for(node)
    with localusers.shared_dir() as shared:
        b = start_bridge(w, node, shared, env={"SERF_RPC_AUTH": key})
        agent.kill()  # the agent is down: its port is free for anyone
        squatter = localusers.start_as("nobody", SQUATTER.format(port=agent.rpc_port, hold=6))
        try:
            assert squatter.stdout is not None
            assert squatter.stdout.readline().strip() == "listening"
            keyfile = tmp_path / "key"
            keyfile.write_text(key)
            cli = subprocess.run(
                [commands.command(), "--rpc-addr", agent.rpc_addr,
                 "--rpc-auth-file", str(keyfile), "members"],
                capture_output=True, text=True, timeout=60, check=False,
            )  # fmt: skip
            result = squatter.stdout.readline().split()  # after its 6 s
        finally:
            localusers.stop(squatter)
        assert cli.returncode == 1 and cli.stdout == ""
        assert cli.stderr.count("\n") == 1 and "uid 65534 (nobody)" in cli.stderr, cli.stderr
        dialled, received = int(result[1]), int(result[3])
        print(f"\nsquatter: dialled {dialled} times, received {received} bytes")
        assert dialled >= 2 and received == 0  # the CLI and the daemon's reconnect loop
        assert "refusing the serf agent" in b.log_text()
        agent.start()  # same port: the real agent is back
        w.wait_for(lambda: b.get("/readyz")[0] == 200, 30, "the bridge ready again")


# Forked from this small wrapper, not from pytest: a child's peak RSS counts the memory
# of the process it was forked from until its exec.
WAIT4 = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def wait4_run(argv: list[str], out: Path, err: Path) -> tuple[int, float, int]:
    """Run ``argv``; (exit code, seconds, peak RSS in KiB) from the kernel's rusage."""
    rss = out.with_suffix(".rss")
    start = time.monotonic()
    with out.open("wb") as o, err.open("wb") as e:
        wrapped = [localusers.PYTHON, "-c", WAIT4, str(rss), *argv]
        code = subprocess.call(wrapped, stdout=o, stderr=e)
    return code, time.monotonic() - start, int(rss.read_text())


def test_a_fake_agent_with_a_million_members_gets_a_protocol_error(world, tmp_path) -> None:
    with FakeAgent(1_000_000) as fake:
        argv = [commands.command(), "--rpc-addr", fake.rpc_addr, "members"]
        code, took, rss = wait4_run(argv, tmp_path / "out", tmp_path / "err")
        err = (tmp_path / "err").read_text()
        printed = len((tmp_path / "out").read_text().splitlines()) + len(err.splitlines())
        print(
            f"\npoint 6 after the fix (CLI members): {took:.2f} s until the error, "
            f"peak RSS {rss / 1024:.1f} MiB, {printed} line(s) printed: {err.strip()}"
        )
        assert code == 1 and printed == 1
        assert "oversized message" in err and "exceeds max_array_len" in err
        assert took < 10 and rss < 100 * 1024
        assert fake.bytes_sent < 20 * 1024 * 1024  # it stopped reading early

        w = world(1)
        node = w.nodes[0]
        with localusers.shared_dir() as shared:
            b = w.bridge(node)
            b.rpc_addr = fake.rpc_addr
            b.socket = str(shared / "fake.sock")
            w.bridges[node] = b.start()
            w.wait_for(lambda: "oversized message" in b.log_text(), 30, "the daemon's error")
            time.sleep(3)  # a few retries
            assert b.proc is not None
            status = Path(f"/proc/{b.proc.pid}/status").read_text()
            peak = int(status.split("VmHWM:")[1].split()[0])
            errors = [line for line in b.log_text().splitlines() if "oversized" in line]
            print(f"daemon against the fake: peak RSS {peak / 1024:.1f} MiB, {len(errors)} line(s)")
            assert peak < 150 * 1024 and len(errors) <= 2
            assert b.get("/healthz")[0] == 200 and b.get("/readyz")[0] == 503
