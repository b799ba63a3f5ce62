"""A throwaway Debian 12 machine booted by systemd-nspawn, for the real systemd boot test.

Role: test infrastructure, not product code (``tests/test_systemd_boot.py`` uses it).
``BootedMachine`` copies the cached bookworm root (``.ci/build-nspawn-rootfs``) to a
fresh directory, boots it with ``systemd-nspawn -b`` on the host's network (so the
container reaches the lab apiserver on the host's loopback, and host agents reach the
container's agent), runs commands in it with ``nsenter``, and on ``close()`` halts it,
kills what is left by PID and removes the copy. The cached root is never booted or
written to, so every run installs on a pristine Debian 12.

Why nsenter: the host's PID 1 is not systemd, so nspawn runs with
``--register=no --keep-unit`` and ``machinectl`` / ``systemd-run -M`` cannot reach the
machine. Its PID 1 is found as the nspawn process's child whose innermost PID is 1.

It must not import pytest or serfbridge's own modules: it drives the machine only through
commands, as an operator would.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from tests.lab.errors import MachineError

DEFAULT_CACHE = "/var/cache/serfbridge"
ROOTFS_NAME = "nspawn-bookworm"
ROOTFS_STAMP = ".serfbridge-rootfs"
#: A clean environment inside the machine: not the host's PATH, venv or locale.
MACHINE_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    "DEBIAN_FRONTEND": "noninteractive",
    "SYSTEMD_PAGER": "",
    "HOME": "/root",
}


_OPEN: list[BootedMachine] = []  # every started machine, for the atexit backstop


def find_rootfs() -> Path:
    """The cached root that `make nspawn-rootfs` built (``SERFBRIDGE_CACHE`` overrides)."""
    root = Path(os.environ.get("SERFBRIDGE_CACHE", DEFAULT_CACHE)) / ROOTFS_NAME
    if not (root / ROOTFS_STAMP).exists():
        raise MachineError(
            f"no bookworm root at {root}: run `make nspawn-rootfs` "
            "(debootstrap, a few minutes once per machine; needs debootstrap, systemd-container)"
        )
    return root


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``predicate`` every 0.1 s; return the seconds it took, or raise MachineError."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise MachineError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


class BootedMachine:
    """One booted copy of the cached root; a context manager that always cleans up."""

    def __init__(
        self,
        name: str,
        *,
        rootfs: Path | None = None,
        bind_ro: Sequence[tuple[Path, str]] = (),
        workdir: Path | None = None,
        boot_timeout: float = 120.0,
    ) -> None:
        self.name = name
        self.rootfs = rootfs or find_rootfs()
        self.bind_ro = tuple(bind_ro)
        self.workdir = Path(
            workdir or tempfile.mkdtemp(prefix="serfbridge-nspawn-", dir="/var/tmp")
        )
        self.root = self.workdir / "root"
        self.console_path = self.workdir / "console.log"
        self.boot_timeout = boot_timeout
        self.leader: int | None = None
        self.timings: dict[str, float] = {}
        self._nspawn: subprocess.Popen[bytes] | None = None
        self._console: IO[bytes] | None = None

    # --- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> BootedMachine:
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
        """Copy the root, boot it, wait until systemd says the boot is done."""
        for tool in ("systemd-nspawn", "nsenter"):
            if shutil.which(tool) is None:
                raise MachineError(
                    f"{tool} not found: apt-get install systemd-container util-linux"
                )
        _OPEN.append(self)
        began = time.monotonic()
        # cp -a keeps owners, modes, hard links and device nodes; the cache stays pristine.
        _run(["cp", "-a", "--reflink=auto", str(self.rootfs), str(self.root)], timeout=300)
        (self.root / "etc/hostname").write_text(self.name + "\n")
        self.timings["copy"] = time.monotonic() - began
        began = time.monotonic()
        self._boot()
        self.timings["boot"] = time.monotonic() - began

    def _boot(self) -> None:
        argv = ["systemd-nspawn", "--quiet", "--boot", f"--directory={self.root}",
                f"--machine={self.name}", "--register=no", "--keep-unit",
                "--console=pipe", "--resolv-conf=copy-host", "--timezone=off"]  # fmt: skip
        argv += [f"--bind-ro={host}:{inside}" for host, inside in self.bind_ro]
        self._console = open(self.console_path, "ab")  # noqa: SIM115 - closed in close()
        self._nspawn = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=self._console, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        wait_until(self._find_leader, 30, f"the PID 1 of machine {self.name}")
        # `--wait` returns once the boot job queue is empty: running, or degraded. Until
        # PID 1 is up, systemctl cannot connect (prints nothing) or sees no booted systemd
        # yet ("offline"); both mean "ask again".
        deadline = time.monotonic() + self.boot_timeout
        while True:
            done = self.run(["systemctl", "is-system-running", "--wait"],
                            check=False, timeout=self.boot_timeout)  # fmt: skip
            state = done.stdout.strip()
            if state in ("running", "degraded"):
                return
            if state in ("maintenance", "stopping") or time.monotonic() > deadline:
                raise MachineError(f"machine {self.name} booted into state {state!r}: "
                                   f"{done.stderr.strip()}\n{self.console()}")  # fmt: skip
            time.sleep(0.2)

    def _find_leader(self) -> bool:
        if self._nspawn is None or self._nspawn.poll() is not None:
            code = self._nspawn.returncode if self._nspawn else None
            raise MachineError(f"systemd-nspawn exited with {code}\n{self.console()}")
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                status = (entry / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            nspid = fields.get("NSpid", "").split()
            if fields.get("PPid", "").strip() == str(self._nspawn.pid) and nspid[-1:] == ["1"]:
                self.leader = int(entry.name)
                return True
        return False

    def close(self) -> None:
        """Halt the machine (SIGTERM to nspawn), SIGKILL what is left, remove the copy."""
        if self in _OPEN:
            _OPEN.remove(self)
        proc, self._nspawn = self._nspawn, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # nspawn asks the container's systemd for an orderly halt
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                if self.leader is not None:  # PID 1 dying takes its whole namespace along
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.leader, signal.SIGKILL)
                proc.kill()
                proc.wait(30)
        if self.leader is not None:
            with contextlib.suppress(MachineError):  # a zombie is the host init's to reap
                wait_until(lambda: not Path(f"/proc/{self.leader}").exists(), 30, "PID 1 exit")
        if self._console is not None:
            self._console.close()
            self._console = None
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- driving the machine --------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the machine (all its namespaces, its root), clean environment."""
        if self.leader is None:
            raise MachineError(f"machine {self.name} is not booted")
        environment = [f"{k}={v}" for k, v in {**MACHINE_ENV, **(env or {})}.items()]
        full = ["nsenter", f"--target={self.leader}", "--all", "--root", "--wd",
                "env", "-i", *environment, *argv]  # fmt: skip
        try:
            done = subprocess.run(full, input=input, capture_output=True, text=True,
                                  timeout=timeout, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            raise MachineError(f"{' '.join(argv)} in {self.name}: no answer in {timeout}s") from exc
        if check and done.returncode != 0:
            raise MachineError(
                f"{' '.join(argv)} in {self.name} exited {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )
        return done

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """``systemctl show -p ...`` as a dict (every value a string, as systemd prints it)."""
        out = self.run(["systemctl", "show", unit, f"--property={','.join(props)}"]).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str | None = None, lines: int = 200) -> str:
        argv = ["journalctl", "--no-pager", "--no-hostname", "-o", "short-iso", "-n", str(lines)]
        if unit:
            argv += ["-u", unit]
        return self.run(argv, check=False).stdout

    def write_file(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file into the machine's root from the host (owner root)."""
        target = self.root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def exists(self, path: str) -> bool:
        return os.path.lexists(self.root / path.lstrip("/"))

    def console(self, lines: int = 40) -> str:
        try:
            text = self.console_path.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])


def _run(argv: list[str], timeout: float) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise MachineError(f"{' '.join(argv)} failed: {done.stderr.strip()}")


@atexit.register
def _close_leftovers() -> None:
    """A run interrupted past its own cleanup still halts its machines and removes copies."""
    for machine in list(_OPEN):
        with contextlib.suppress(Exception):
            machine.close()
