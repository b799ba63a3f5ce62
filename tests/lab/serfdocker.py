"""The container backend of ``tests.lab.serfagents``: each lab agent is a Docker container.

Role: test infrastructure. ``make test-docker`` sets ``SERFBRIDGE_LAB_SERF_IMAGE`` (and
``DOCKER_HOST`` for its private engine); every ``SerfCluster`` then starts its agents as
containers of that image, with the same argv, ports and names as host processes:

- start: ``docker run`` the first time, ``docker start`` of the same container after
  (same ports, same argv; whom to join is re-read from a config file in the workdir);
- kill -9: ``docker kill``; SIGSTOP / SIGCONT: ``docker pause`` / ``docker unpause``;
  SIGTERM: ``docker stop``; logs: ``docker logs``; close: ``docker rm -f``.

Host network, so the lab's 127.0.0.1 ports work unchanged. Paths in an ``AgentSpec``
(tags files, handler scripts, sockets, kubeconfigs) are host paths: the system temp dir
(where every lab and pytest dir lives) and the repository (read-only, for
``handlers/serf-event-handler``) are mounted at the same paths. The image is
``deploy/serf.Dockerfile`` built on our own image, so ``serfbridge-handle`` is on its PATH
(``handle_command()``).

It must not import pytest or ``serfbridge.rpc``. Containers are tracked by id, never by
name pattern; an atexit backstop removes any a caller never closed.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from tests.lab.errors import LabError, PortTaken
from tests.lab.serfagents import (
    _PORT_TAKEN,
    IMAGE_ENV,
    AgentSpec,
    SerfAgent,
    free_port,
)

#: The docker client to run (``make test-docker`` passes Debian's /usr/bin/docker).
DOCKER_ENV = "SERFBRIDGE_LAB_DOCKER"
REPO = Path(__file__).resolve().parents[2]
LABEL = "io.serfbridge.lab"
_CONTAINERS: set[str] = set()  # ids of containers not yet removed, for the atexit backstop


def docker_bin() -> str:
    return os.environ.get(DOCKER_ENV) or "docker"


def enabled() -> bool:
    """True when the lab runs its agents in containers (``make test-docker``)."""
    return bool(os.environ.get(IMAGE_ENV))


def handle_command() -> str:
    """What a lab agent's event handler runs as ``serfbridge-handle``: the image's own
    under ``make test-docker``, else the installed one that ``commands`` names."""
    if enabled():
        return "serfbridge-handle"
    from tests.lab import commands

    return commands.command("serfbridge-handle")


def docker(*args: str, timeout: float = 60.0, check: bool = True) -> str:
    """Run one docker command; its stdout. A failure raises ``LabError`` with stderr."""
    try:
        done = subprocess.run(
            [docker_bin(), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LabError(f"docker {args[0]} failed: {exc}") from exc
    if check and done.returncode != 0:
        raise LabError(f"docker {' '.join(args[:2])} failed: {done.stderr.strip()}")
    return done.stdout


def check_image(image: str) -> None:
    """Fail with the fixing command when the engine or the image is not there."""
    try:
        docker("image", "inspect", "--format", "{{.Id}}", image, timeout=20)
    except LabError as exc:
        raise LabError(
            f"serf image {image!r} not available ({exc}); `make test-docker` starts the "
            "engine and builds it"
        ) from exc


class DockerSerfAgent(SerfAgent):
    """A ``SerfAgent`` whose process runs in a container (host network, same ports)."""

    def __init__(self, spec: AgentSpec, *, image: str, **options: Any) -> None:
        super().__init__(spec, **options)
        self.image = image
        self.container: str | None = None
        self._pids: list[int] = []
        self.join_config = self.workdir / f"{spec.name}.join.json"

    @property
    def pid(self) -> int | None:
        return self._pids[-1] if self._pids else None

    @property
    def pids(self) -> list[int]:
        return list(self._pids)

    @property
    def running(self) -> bool:
        """Running or paused, like a live (maybe SIGSTOPped) process."""
        return self._state()[0]

    def start(self) -> None:
        if self.running:
            raise LabError(f"agent {self.name} is already running (container {self.container})")
        for attempt in range(5):
            try:
                self._launch()
                self._ports_fixed = True
                return
            except PortTaken:
                if attempt == 4:
                    raise
                if self._ports_fixed:
                    time.sleep(0.2)
                else:  # the argv carries the ports: a new container with new ones
                    self.discard()
                    self.bind_port, self.rpc_port = free_port(), free_port()

    def kill(self) -> None:
        """``docker kill`` (SIGKILL) and wait for the exit; a paused one dies too."""
        if self.container is not None and self.running:
            docker("kill", self.container)
            if self.stopped:
                docker("unpause", self.container, check=False)
            docker("wait", self.container)
        self.stopped = False

    def stop(self) -> None:
        """``docker pause``: the agent freezes (cgroup freezer), peers declare it failed."""
        self._require_running()
        docker("pause", self._id())
        self.stopped = True

    def cont(self) -> None:
        self._require_running()
        docker("unpause", self._id())
        self.stopped = False

    def terminate(self, grace: float = 5.0) -> None:
        if self.container is None or not self.running:
            return
        if self.stopped:
            docker("unpause", self.container, check=False)
        docker("stop", "-t", str(max(1, round(grace))), self.container, timeout=grace + 30)
        self.stopped = False

    def log_text(self) -> str:
        """``docker logs``: every incarnation of this container, stdout and stderr."""
        if self.container is None:
            return ""
        done = subprocess.run(
            [docker_bin(), "logs", self.container],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=30,
        )
        return done.stdout.decode("utf-8", errors="replace")

    def discard(self) -> None:
        """``docker rm -f``: the container and its logs are gone."""
        if self.container is not None:
            docker("rm", "-f", "-v", self.container, check=False)
            _CONTAINERS.discard(self.container)
            self.container = None

    def _join_args(self) -> list[str]:
        # Fixed in the container's argv; the file it names is rewritten before each start.
        return [f"-config-file={self.join_config}"]

    def _launch(self) -> None:
        self.join_config.write_text(json.dumps({"start_join": self.join_peers()}))
        logged = len(self.log_text())
        if self.container is None:
            argv = self.command()[1:]  # the image's entrypoint is the serf binary
            self.container = docker("run", "-d", *self._run_options(), self.image, *argv).strip()
            _CONTAINERS.add(self.container)
        else:
            docker("start", self.container)
        self.stopped = False
        self._wait_ready_container(logged)

    def _run_options(self) -> list[str]:
        name = f"serfbridge-lab-{self.name}-{uuid.uuid4().hex[:8]}"
        options = ["--name", name, "--label", f"{LABEL}={os.getpid()}", "--network", "host"]
        mounts = {Path(tempfile.gettempdir()).resolve(): "rw", REPO: "ro"}
        for path in (self.workdir, self.spec.tags_file and self.spec.tags_file.parent):
            if path is not None and not _under(Path(path).resolve(), mounts):
                mounts[Path(path).resolve()] = "rw"
        for path, mode in mounts.items():
            options += ["--mount", f"type=bind,source={path},target={path},readonly={mode == 'ro'}"]
        return options

    def _wait_ready_container(self, logged: int) -> None:
        deadline = time.monotonic() + self._start_timeout
        running, pid, code = self._state()
        if pid:
            self._pids.append(pid)
        while time.monotonic() < deadline:
            if self._answers_as_itself():
                return
            running, _, code = self._state()
            if not running:
                tail = "\n".join(self.log_text()[logged:].splitlines()[-40:])
                error = PortTaken if _PORT_TAKEN in tail.lower() else LabError
                raise error(
                    f"serf agent {self.name} (container {self.container}) exited with {code} "
                    f"before its RPC answered; log tail:\n{tail}"
                )
            time.sleep(0.05)
        self.kill()
        raise LabError(
            f"serf agent {self.name} (container {self.container}) did not answer an RPC "
            f"handshake on {self.rpc_addr} within {self._start_timeout}s; log tail:\n"
            f"{self.log_tail()}"
        )

    def _state(self) -> tuple[bool, int, int]:
        """(running or paused, host PID, exit code) from ``docker inspect``."""
        if self.container is None:
            return False, 0, 0
        state = "{{.State.Running}} {{.State.Pid}} {{.State.ExitCode}}"
        out = docker("inspect", "--format", state, self.container)
        running, pid, code = out.split()
        return running == "true", int(pid), int(code)

    def _id(self) -> str:
        if self.container is None:
            raise LabError(f"agent {self.name} has no container")
        return self.container

    def _require_running(self) -> None:
        if not self.running:
            raise LabError(f"agent {self.name} is not running")


def _under(path: Path, roots: dict[Path, str]) -> bool:
    return any(path == root or root in path.parents for root in roots)


@atexit.register
def _remove_leftovers() -> None:
    """Backstop for callers that never closed their cluster."""
    for container in list(_CONTAINERS):
        with contextlib.suppress(LabError):
            docker("rm", "-f", "-v", container, check=False, timeout=20)
        _CONTAINERS.discard(container)
