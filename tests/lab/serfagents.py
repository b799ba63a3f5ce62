"""Real ``serf agent`` processes on 127.0.0.1: a throwaway Serf cluster for tests and demos.

Role: test/demo infrastructure, not product code. ``tests/fixtures_serf.py``, ``make demo``
and ``bench/`` start agents through ``SerfCluster``; the product never imports this module.

It must not import pytest, and it must not import ``serfbridge.rpc`` (that client is what the
tests check). Readiness and membership checks speak just enough raw RPC themselves:
handshake, auth when the agent has a key, then one command (reference/serf-rpc.md §1-§3).

Every process is tracked by its ``Popen`` (so by PID, never by name). ``SerfCluster`` stops
all of them on exit, restarted incarnations included, and removes its temp dir. With
``SERFBRIDGE_LAB_SERF_IMAGE`` set (``make test-docker``) the agents are containers of that
image instead, same argv and ports (``tests.lab.serfdocker``).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import msgpack  # type: ignore[import-untyped,unused-ignore]

from tests.lab.errors import LabError, PortTaken

HOST = "127.0.0.1"
SERF_BIN = "serf"
#: Set (by `make test-docker`) to a Serf image: agents then run as containers of it.
IMAGE_ENV = "SERFBRIDGE_LAB_SERF_IMAGE"

#: A member record exactly as the agent sends it (``Name``, ``Addr`` bytes, ``Status``, ...).
Member = dict[str, Any]
T = TypeVar("T")

# reference/serf-rpc.md §1: which replies carry a body, and the early refusals that never do.
_BODY_COMMANDS = frozenset(
    {"join", "members", "members-filtered", "stats", "get-coordinate"}
    | {"install-key", "use-key", "remove-key", "list-keys"}
)
_NO_BODY_ERRORS = frozenset(
    {"Handshake required", "Authentication required", "Unsupported command"}
)
_PORT_TAKEN = "address already in use"
_MAX_JOIN_PEERS = 3
_SPAWNED: list[subprocess.Popen[bytes]] = []  # every agent process, for the atexit backstop
_HANDED_OUT: set[int] = set()  # ports given out by this process, never given twice


@dataclass(frozen=True)
class AgentSpec:
    """How one agent is started. ``tags`` and ``tags_file`` exclude each other in serf."""

    name: str
    rpc_auth: str | None = None
    # "[filter=]command", passed as -event-handler; "{rpc_addr}" and "{name}" are filled in
    # at start, so a handler can be told how to reach its own agent.
    event_handlers: Sequence[str] = ()
    tags: Mapping[str, str] = field(default_factory=dict)
    tags_file: Path | None = None
    extra_args: Sequence[str] = ()


# --- raw RPC: just enough to check readiness and read members ---------------------------


def raw_request(
    rpc_addr: str,
    command: str,
    *,
    auth: str | None = None,
    body: Mapping[str, Any] | None = None,
    timeout: float = 5.0,
) -> tuple[str, dict[str, Any] | None]:
    """Handshake, ``auth`` if a key is given, then one command; returns (Error, body).

    Stops at the first step whose Error is not empty and returns that error. Socket
    errors (``OSError``, timeouts included) propagate; a dropped connection or a reply
    out of step raises ``LabError``.
    """
    host, _, port = rpc_addr.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.settimeout(timeout)
        unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape")
        steps: list[tuple[str, Mapping[str, Any] | None]] = [("handshake", {"Version": 1})]
        if auth is not None:
            steps.append(("auth", {"AuthKey": auth}))
        steps.append((command, body))
        for seq, (step, step_body) in enumerate(steps):
            sock.sendall(_pack(step, seq, step_body))
            error = _read_header(sock, unpacker, seq)
            if error:
                break  # §1.1: never send more after a refused handshake or auth
        reached = seq == len(steps) - 1
        wants_body = reached and command in _BODY_COMMANDS and error not in _NO_BODY_ERRORS
        reply = _read_object(sock, unpacker) if wants_body else None
        return error, reply


def _pack(command: str, seq: int, body: Mapping[str, Any] | None) -> bytes:
    data: bytes = msgpack.packb({"Command": command, "Seq": seq})
    return data + (msgpack.packb(dict(body)) if body is not None else b"")


def _read_object(sock: socket.socket, unpacker: Any) -> Any:
    while True:
        with contextlib.suppress(StopIteration):
            return next(unpacker)
        chunk = sock.recv(65536)
        if not chunk:
            raise LabError("agent closed the RPC connection")
        unpacker.feed(chunk)


def _read_header(sock: socket.socket, unpacker: Any, seq: int) -> str:
    header = _read_object(sock, unpacker)
    if not isinstance(header, dict) or header.get("Seq") != seq:
        raise LabError(f"unexpected RPC reply {header!r} (wanted Seq {seq})")
    return str(header.get("Error", ""))


# --- ports -------------------------------------------------------------------------------


def free_port(host: str = HOST) -> int:
    """A port free for both TCP and UDP on ``host`` right now (serf gossip binds both)."""
    for _ in range(200):
        with (
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        ):
            tcp.bind((host, 0))
            port: int = tcp.getsockname()[1]
            if port in _HANDED_OUT:
                continue
            try:
                udp.bind((host, port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise LabError("found no port free for both TCP and UDP")


# --- one agent ---------------------------------------------------------------------------


class SerfAgent:
    """One ``serf agent`` process. Its ports stay the same across restarts.

    ``peers`` returns gossip addresses to ``-join`` at each start (the cluster passes its
    running agents), so a restarted agent rejoins the others.
    """

    def __init__(
        self,
        spec: AgentSpec,
        *,
        workdir: Path,
        bind_port: int | None = None,
        rpc_port: int | None = None,
        peers: Callable[[], Sequence[str]] = tuple,
        serf_bin: str = SERF_BIN,
        start_timeout: float = 10.0,
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.log_path = workdir / f"{spec.name}.log"
        self.bind_port = bind_port or free_port()
        self.rpc_port = rpc_port or free_port()
        self._ports_fixed = bind_port is not None and rpc_port is not None
        self._peers = peers
        self._serf_bin = serf_bin
        self._start_timeout = start_timeout
        self.processes: list[subprocess.Popen[bytes]] = []  # every incarnation, oldest first
        self.stopped = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def rpc_addr(self) -> str:
        return f"{HOST}:{self.rpc_port}"

    @property
    def bind_addr(self) -> str:
        return f"{HOST}:{self.bind_port}"

    @property
    def pid(self) -> int | None:
        """PID of the current process (None if never started)."""
        return self.processes[-1].pid if self.processes else None

    @property
    def pids(self) -> list[int]:
        """The PID of every incarnation, oldest first."""
        return [proc.pid for proc in self.processes]

    @property
    def running(self) -> bool:
        return bool(self.processes) and self.processes[-1].poll() is None

    def start(self) -> None:
        """Spawn the agent and wait until its RPC handshake succeeds."""
        if self.running:
            raise LabError(f"agent {self.name} is already running (pid {self.pid})")
        for attempt in range(5):
            try:
                self._wait_ready(self._spawn())
                self._ports_fixed = True
                return
            except PortTaken:
                if attempt == 4:
                    raise
                if self._ports_fixed:
                    time.sleep(0.2)  # our own just-killed incarnation may still hold it
                else:
                    self.bind_port, self.rpc_port = free_port(), free_port()

    def restart(self) -> None:
        """kill -9 if running, then start again on the same gossip and RPC ports."""
        self.kill()
        self.start()

    def kill(self) -> None:
        """SIGKILL and reap (a stopped agent dies too)."""
        if self.running:
            self.processes[-1].kill()
            self.processes[-1].wait()
        self.stopped = False

    def stop(self) -> None:
        """SIGSTOP: the process freezes, peers will declare it failed."""
        self._signal(signal.SIGSTOP)
        self.stopped = True

    def cont(self) -> None:
        """SIGCONT after ``stop()``."""
        self._signal(signal.SIGCONT)
        self.stopped = False

    def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM (no graceful leave in serf's defaults) and wait; SIGKILL after ``grace``."""
        if not self.running:
            return
        proc = self.processes[-1]
        proc.terminate()
        proc.send_signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self.stopped = False

    def log_text(self) -> str:
        """Everything this agent logged, all incarnations (stdout and stderr)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def members(self, timeout: float = 5.0) -> list[Member]:
        """This agent's view of the cluster, over raw RPC (with its auth key if it has one)."""
        error, reply = raw_request(
            self.rpc_addr, "members", auth=self.spec.rpc_auth, timeout=timeout
        )
        if error or reply is None:
            raise LabError(f"members on {self.name} failed: {error or 'no body'}")
        members: list[Member] = reply["Members"]
        return members

    def command(self) -> list[str]:
        """The argv of the next start (no secrets: the auth key lives in a config file)."""
        spec = self.spec
        argv = [self._serf_bin, "agent", f"-node={spec.name}", f"-bind={self.bind_addr}"]
        argv += [f"-rpc-addr={self.rpc_addr}", "-log-level=debug"]
        if spec.rpc_auth is not None:
            argv.append(f"-config-file={self._write_auth_config(spec.rpc_auth)}")
        argv += [
            "-event-handler="
            + handler.replace("{rpc_addr}", self.rpc_addr).replace("{name}", spec.name)
            for handler in spec.event_handlers
        ]
        if spec.tags_file is not None:
            argv.append(f"-tags-file={spec.tags_file}")
        for key, value in spec.tags.items():
            argv += ["-tag", f"{key}={value}"]
        return argv + self._join_args() + list(spec.extra_args)

    def _join_args(self) -> list[str]:
        return [f"-join={peer}" for peer in self.join_peers()]

    def join_peers(self) -> list[str]:
        """Gossip addresses to join at this start (the running agents, at most three)."""
        return list(self._peers())[:_MAX_JOIN_PEERS]

    def discard(self) -> None:
        """Release what outlives the processes (nothing here; a container backend has some)."""

    def _write_auth_config(self, key: str) -> Path:
        path = self.workdir / f"{self.name}.config.json"
        path.write_text(json.dumps({"rpc_auth": key}), encoding="utf-8")
        path.chmod(0o600)
        return path

    def _spawn(self) -> subprocess.Popen[bytes]:
        argv = self.command()
        with self.log_path.open("ab") as log:
            log.write(f"--- serfagents: starting {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C in the terminal must not make it leave
            )
        self.processes.append(proc)
        _SPAWNED.append(proc)
        self.stopped = False
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + self._start_timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.log_tail()
                error = PortTaken if _PORT_TAKEN in tail.lower() else LabError
                raise error(
                    f"serf agent {self.name} exited with {proc.returncode} before its RPC "
                    f"answered; log tail:\n{tail}"
                )
            if self._answers_as_itself():
                return
            time.sleep(0.02)
        proc.kill()
        proc.wait()
        raise LabError(
            f"serf agent {self.name} (pid {proc.pid}) did not answer an RPC handshake on "
            f"{self.rpc_addr} within {self._start_timeout}s; log tail:\n{self.log_tail()}"
        )

    def _answers_as_itself(self) -> bool:
        """Handshake (+auth) and ``stats``: the port may belong to someone else's agent."""
        try:
            error, stats = raw_request(self.rpc_addr, "stats", auth=self.spec.rpc_auth, timeout=1.0)
        except (OSError, LabError):
            return False
        return not error and stats is not None and stats["agent"]["name"] == self.name

    def _signal(self, signum: signal.Signals) -> None:
        if not self.running:
            raise LabError(f"agent {self.name} is not running")
        self.processes[-1].send_signal(signum)


# --- a cluster ---------------------------------------------------------------------------


class SerfCluster:
    """N joined agents in a private temp dir; a context manager that cleans up by PID.

    ``SerfCluster(3)`` starts n1..n3; ``SerfCluster(specs=[AgentSpec("a", rpc_auth="k")])``
    sets per-agent options.
    """

    def __init__(
        self,
        n: int = 3,
        *,
        specs: Sequence[AgentSpec] | None = None,
        serf_bin: str = SERF_BIN,
        start_timeout: float = 10.0,
        join_timeout: float = 20.0,
        grace: float = 3.0,
    ) -> None:
        self.specs = (
            list(specs) if specs is not None else [AgentSpec(f"n{i + 1}") for i in range(n)]
        )
        # `make test-docker` names an image: every agent then runs in a container of it.
        self.image = os.environ.get(IMAGE_ENV) or None
        self.serf_bin = serf_bin
        self.start_timeout = start_timeout
        self.join_timeout = join_timeout
        self.grace = grace
        self.workdir = Path(tempfile.mkdtemp(prefix="serfbridge-lab-"))
        self.agents: list[SerfAgent] = []
        self._final_logs: str | None = None

    def __enter__(self) -> SerfCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def start(self) -> None:
        """Start every agent (each joins the ones already running), then wait for the mesh."""
        if self.image is not None:
            from tests.lab import serfdocker  # here: it imports this module

            serfdocker.check_image(self.image)
        elif shutil.which(self.serf_bin) is None:
            raise LabError(f"`{self.serf_bin}` not found: install it (`apt-get install serf`)")
        for spec in self.specs:
            self.add_agent(spec, wait=False)
        self.wait_joined()

    def add_agent(self, spec: AgentSpec | None = None, *, wait: bool = True) -> SerfAgent:
        """Start one more agent joined to the running ones; wait for everyone to see it."""
        spec = spec or AgentSpec(f"n{len(self.agents) + 1}")
        if any(agent.name == spec.name for agent in self.agents):
            raise LabError(f"an agent named {spec.name} already exists")
        agent = self._new_agent(spec)
        self.agents.append(agent)
        agent.start()
        if wait:
            self.wait_joined()
        return agent

    def _new_agent(self, spec: AgentSpec) -> SerfAgent:
        options: dict[str, Any] = {
            "workdir": self.workdir,
            "peers": lambda: self._join_targets(spec.name),
            "serf_bin": self.serf_bin,
            "start_timeout": self.start_timeout,
        }
        if self.image is None:
            return SerfAgent(spec, **options)
        from tests.lab import serfdocker  # here: it imports this module

        return serfdocker.DockerSerfAgent(spec, image=self.image, **options)

    def agent(self, name: str) -> SerfAgent:
        for agent in self.agents:
            if agent.name == name:
                return agent
        raise KeyError(name)

    @property
    def pids(self) -> list[int]:
        """Every PID this cluster ever spawned, restarts included."""
        return [pid for agent in self.agents for pid in agent.pids]

    def live_agents(self) -> list[SerfAgent]:
        """Agents that are running and not SIGSTOPped."""
        return [agent for agent in self.agents if agent.running and not agent.stopped]

    def members(self, agent: SerfAgent | str) -> list[Member]:
        """Raw member dicts as ``agent`` sees them."""
        return self._resolve(agent).members()

    def statuses(self, agent: SerfAgent | str) -> dict[str, str]:
        """``{name: status}`` as ``agent`` sees it."""
        return {member["Name"]: member["Status"] for member in self.members(agent)}

    def wait_for(
        self, predicate: Callable[[], T], timeout: float = 20.0, *, what: str = "condition"
    ) -> T:
        """Poll ``predicate`` until it returns something truthy, and return that.

        Lab and socket errors count as "not yet"; on timeout the last one is reported.
        """
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                result = predicate()
                if result:
                    return result
            except (OSError, LabError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                cause = f" (last error: {last_error})" if last_error else ""
                raise LabError(f"timed out after {timeout}s waiting for {what}{cause}")
            time.sleep(0.1)

    def wait_joined(self, timeout: float | None = None) -> None:
        """Wait until every live agent sees every live agent as alive."""
        names = {agent.name for agent in self.live_agents()}

        def joined() -> bool:
            return all(
                names <= {n for n, s in self.statuses(agent).items() if s == "alive"}
                for agent in self.live_agents()
            )

        self.wait_for(joined, timeout or self.join_timeout, what=f"{sorted(names)} all alive")

    def wait_status(
        self,
        name: str,
        status: str,
        timeout: float = 20.0,
        *,
        via: SerfAgent | str | None = None,
    ) -> None:
        """Wait until ``via`` (default: every other live agent) shows ``name`` as ``status``."""
        viewers = [self._resolve(via)] if via is not None else self._others(name)
        self.wait_for(
            lambda: all(self.statuses(viewer).get(name) == status for viewer in viewers),
            timeout,
            what=f"{name} {status} as seen by {[viewer.name for viewer in viewers]}",
        )

    def logs(self, lines: int = 40) -> str:
        """Every agent's log tail, one titled block each (kept after ``close()``)."""
        if self._final_logs is not None:
            return self._final_logs
        blocks = [
            f"=== {agent.name} ({agent.log_path}) ===\n{agent.log_tail(lines)}"
            for agent in self.agents
        ]
        return "\n".join(blocks)

    def close(self) -> None:
        """SIGTERM every process ever started, SIGKILL after the grace, remove the temp dir."""
        if self._final_logs is not None:
            return
        self._final_logs = self.logs()
        procs = [proc for agent in self.agents for proc in agent.processes]
        _stop_processes(procs, self.grace)
        for agent in self.agents:
            with contextlib.suppress(LabError):
                agent.discard()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _resolve(self, agent: SerfAgent | str) -> SerfAgent:
        return self.agent(agent) if isinstance(agent, str) else agent

    def _others(self, name: str) -> list[SerfAgent]:
        return [agent for agent in self.live_agents() if agent.name != name]

    def _join_targets(self, name: str) -> list[str]:
        return [agent.bind_addr for agent in self._others(name)]


def _stop_processes(procs: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM (+SIGCONT for stopped ones), wait up to ``grace``, then SIGKILL; reap all."""
    alive = [proc for proc in procs if proc.poll() is None]
    for proc in alive:
        proc.terminate()
        proc.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + grace
    for proc in alive:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for proc in procs:  # handler scripts the agents left behind share the agent's group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ValueError):
            _SPAWNED.remove(proc)


@atexit.register
def _stop_leftovers() -> None:
    """Backstop for callers that never closed their cluster."""
    _stop_processes(list(_SPAWNED), 1.0)
