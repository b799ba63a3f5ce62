"""Decoding ``members``: our client against PyPI ``serfclient`` and the Go ``serf`` CLI.

Issue 2's benchmark. Live part: one 20-agent loopback cluster (``SerfCluster``), all
three clients asking the same agent, in one run, as per-call median and p90 with ratios
to our ``SerfClient``. Offline part: a synthetic 1000-member reply, built with msgpack
the way the agent encodes it (``reference/serf-probe.md`` §2), decoded by the pure core
(``rpc.protocol.Connection``), by plain ``msgpack.unpackb`` (the floor) and by
serfclient's own read path fed from a fake socket.

Speed is reported, never asserted. ``bench_services`` reuses the timing and table helpers.

Run: ``.venv/bin/python -m bench.bench_rpc_members``.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence

import msgpack
from serfclient import SerfClient as PyPISerf
from serfclient.connection import SerfConnection

from serfbridge.rpc.client import SerfClient, split_addr
from serfbridge.rpc.protocol import Connection, Ready, Reply
from tests.lab.fake_core_agent import encode_reply
from tests.lab.serfagents import SERF_BIN, SerfCluster

AGENTS = 20
#: Longer than serf's 30 s reconnect interval: a member falsely marked failed under
#: CPU load (20 agents on a small box) rejoins by itself instead of failing the start.
JOIN_TIMEOUT = 45.0
LIB_CALLS = 200  # (a) ours and (b) serfclient
CLI_CALLS = 30  # (c) one `serf` process per call
WARMUP = 5
SYNTHETIC_MEMBERS = 1000
SYNTHETIC_ROUNDS = 30
CHUNK = 65536  # what our client's socket read asks for
SERFCLIENT_CHUNK = 4096  # serfclient reads page-sized blocks


# --- shared helpers (bench_services imports these) -------------------------------------


def time_calls(fn: Callable[[], object], n: int, *, warmup: int = WARMUP) -> list[float]:
    """Seconds per call of ``fn``, ``n`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def time_interleaved(
    fns: Sequence[Callable[[], object]], n: int, *, warmup: int = 2
) -> list[list[float]]:
    """Like ``time_calls`` for several functions, taking turns so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(n):
        for fn, out in zip(fns, samples, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return samples


def p90(samples: Sequence[float]) -> float:
    """Nearest-rank 90th percentile."""
    ordered = sorted(samples)
    return ordered[max(0, -(-9 * len(ordered) // 10) - 1)]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A small aligned table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        print("  " + "  ".join(cells).rstrip())


def run_checked(argv: Sequence[str]) -> str:
    """Run a command, return its stdout; a failure is an error, not a fast sample."""
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


# --- live: one cluster, three clients --------------------------------------------------


def serf_cli_members(addr: str) -> int:
    out = run_checked([SERF_BIN, "members", "-format", "json", f"-rpc-addr={addr}"])
    return len(json.loads(out)["members"])


def describe_serfclient(client: PyPISerf) -> str:
    """Whether serfclient kept its one TCP connection across calls (it dials in __init__)."""
    sock = client.connection._socket
    before = (id(sock), sock.getsockname())
    client.members()
    client.members()
    after_sock = client.connection._socket
    same = (id(after_sock), after_sock.getsockname()) == before
    return (
        "serfclient: one TCP connection, dialled and handshaken in SerfClient(); "
        f"same socket and local port after calls: {'yes' if same else 'no'} "
        "(a new msgpack.Unpacker per call, 4 KiB reads)"
    )


def live_rows(addr: str) -> tuple[list[list[str]], list[str]]:
    host, port = split_addr(addr)
    notes = []
    with SerfClient(addr) as ours:
        assert len(ours.members()) == AGENTS
        ours_s = time_calls(ours.members, LIB_CALLS)
    theirs = PyPISerf(host=host, port=port)
    try:
        assert len(theirs.members().body["Members"]) == AGENTS
        notes.append(describe_serfclient(theirs))
        theirs_s = time_calls(theirs.members, LIB_CALLS)
    finally:
        theirs.close()
    assert serf_cli_members(addr) == AGENTS
    cli_s, start_s = time_interleaved(
        [lambda: serf_cli_members(addr), lambda: run_checked([SERF_BIN, "version"])], CLI_CALLS
    )
    base = statistics.median(ours_s)
    rows = [
        _row(f"(a) serfbridge SerfClient.members(), kept conn, n={LIB_CALLS}", ours_s, base),
        _row(f"(b) PyPI serfclient members(), kept conn, n={LIB_CALLS}", theirs_s, base),
        _row(f"(c) `serf members -format json` + json.loads, n={CLI_CALLS}", cli_s, base),
        _row(f"    `serf version` (empty process start), n={CLI_CALLS}", start_s, base),
    ]
    estimate = statistics.median(cli_s) - statistics.median(start_s)
    rows.append(
        ["(c') serf CLI once connected: (c) - start", ms(estimate), "-", f"{estimate / base:.2f}x"]
    )
    return rows, notes


def _row(label: str, samples: Sequence[float], base: float) -> list[str]:
    median = statistics.median(samples)
    return [label, ms(median), ms(p90(samples)), f"{median / base:.2f}x"]


# --- offline: a synthetic 1000-member reply --------------------------------------------


def synthetic_members_body(count: int) -> bytes:
    """A ``members`` body as the agent encodes it: keys sorted, Addr as 4-byte bin (§3)."""
    members = []
    for i in range(count):
        member = {
            "Addr": bytes([10, 139, i // 256, i % 256]),
            "DelegateCur": 5,
            "DelegateMax": 5,
            "DelegateMin": 2,
            "Name": f"node-{i:04d}",
            "Port": 7946,
            "ProtocolCur": 2,
            "ProtocolMax": 5,
            "ProtocolMin": 1,
            "Status": "alive",
            "Tags": {"role": "web", "dc": "guifi-bcn", "k8s": f"cloudy-k8s/node-{i:04d}"},
        }
        members.append(member)
    body: bytes = msgpack.packb({"Members": members}, use_bin_type=True)
    return body


def ready_connection() -> Connection:
    core = Connection()
    core.data_to_send()
    core.receive_data(encode_reply(0))
    if not any(isinstance(event, Ready) for event in core.next_events()):
        raise RuntimeError("core did not become ready after the handshake reply")
    return core


def core_decode_seconds(body: bytes, rounds: int) -> list[float]:
    """Time receive_data (64 KiB chunks, as the client reads) + next_events per reply."""
    core = ready_connection()
    samples = []
    for _ in range(WARMUP + rounds):
        seq = core.send("members")
        core.data_to_send()
        data = encode_reply(seq) + body
        chunks = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        start = time.perf_counter()
        for chunk in chunks:
            core.receive_data(chunk)
        events = core.next_events()
        samples.append(time.perf_counter() - start)
        reply = events[0]
        assert isinstance(reply, Reply) and isinstance(reply.body, tuple)
        assert len(reply.body) == SYNTHETIC_MEMBERS
    return samples[WARMUP:]


class _ReplaySocket:
    """Just enough socket for ``SerfConnection.call``: swallow sends, replay one reply."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def rewind(self) -> None:
        self._pos = 0

    def sendall(self, data: bytes) -> None:
        pass

    def recv(self, size: int) -> bytes:
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk


def serfclient_decode_seconds(body: bytes, rounds: int) -> list[float]:
    """serfclient's own read path (``SerfConnection.call``) over a replaying fake socket."""
    conn = SerfConnection()
    sock = _ReplaySocket(encode_reply(1) + body)
    conn._socket = sock

    def one() -> None:
        sock.rewind()
        result = conn.call("members")
        assert len(result.body["Members"]) == SYNTHETIC_MEMBERS

    return time_calls(one, rounds)


def synthetic_rows() -> tuple[list[list[str]], str]:
    body = synthetic_members_body(SYNTHETIC_MEMBERS)
    core_s = core_decode_seconds(body, SYNTHETIC_ROUNDS)
    floor_s = time_calls(
        lambda: msgpack.unpackb(body, raw=False, unicode_errors="surrogateescape"),
        SYNTHETIC_ROUNDS,
    )
    theirs_s = serfclient_decode_seconds(body, SYNTHETIC_ROUNDS)
    base = statistics.median(core_s)
    rows = []
    for label, samples in (
        ("serfbridge pure core: receive_data + next_events", core_s),
        ("msgpack.unpackb(body) alone (floor)", floor_s),
        ("PyPI serfclient SerfConnection.call (fake socket)", theirs_s),
    ):
        median = statistics.median(samples)
        rows.append(
            [
                label,
                ms(median),
                f"{1 / median:,.0f}",
                f"{SYNTHETIC_MEMBERS / median:,.0f}",
                f"{median / base:.2f}x",
            ]
        )
    return rows, f"{len(body):,} B body"


def main() -> None:
    started = time.monotonic()
    with SerfCluster(AGENTS, join_timeout=JOIN_TIMEOUT) as cluster:
        addr = cluster.agents[0].rpc_addr
        live, notes = live_rows(addr)
    print_table(
        f"members on a {AGENTS}-agent loopback cluster, per call "
        "(ratio = median / our median; higher = slower than ours)",
        ["client", "median ms", "p90 ms", "vs ours"],
        live,
    )
    for note in notes:
        print(f"  note: {note}")
    print(
        "  note: (c) and `serf version` ran alternately; (c') still includes the CLI's TCP "
        "connect + handshake; a rough estimate (the difference of two noisy medians)"
    )
    synthetic, size = synthetic_rows()
    print_table(
        f"synthetic {SYNTHETIC_MEMBERS}-member members reply ({size}), decode only, "
        f"median of {SYNTHETIC_ROUNDS} (ratio = time / pure-core time)",
        ["decoder", "ms/reply", "replies/s", "members/s", "vs core"],
        synthetic,
    )
    print(f"\ntotal wall time {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
