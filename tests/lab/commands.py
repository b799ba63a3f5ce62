"""Which serfbridge commands the tests, ``make demo`` and ``make test-deb`` run.

Tests run what users run: the installed console scripts and the installed event-handler
shim, never ``python -m serfbridge`` from the checkout. By default they are the ones next
to the running interpreter (the venv ``make test`` installs the wheel into, or the
editable dev venv); ``SERFBRIDGE_BIN`` names another directory (``/usr/bin`` for the
Debian package) and ``SERFBRIDGE_SHIM`` another shim (``/usr/lib/serfbridge/...``).

``run`` is a subprocess twin of ``click.testing.CliRunner().invoke`` (``exit_code``,
``output``, ``stdout``, ``stderr``), so a test can swap one for the other.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

BIN_ENV = "SERFBRIDGE_BIN"
SHIM_ENV = "SERFBRIDGE_SHIM"
SHIM_NAME = "serf-event-handler"


def bin_dir() -> Path:
    return Path(os.environ.get(BIN_ENV) or Path(sys.executable).parent)


def command(name: str = "serfbridge") -> str:
    """The installed ``serfbridge`` or ``serfbridge-handle``; it must exist."""
    path = bin_dir() / name
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is not an installed command (set {BIN_ENV}?)")
    return str(path)


def shim() -> str:
    """The installed event-handler shim (the wheel puts it next to the console scripts)."""
    path = Path(os.environ.get(SHIM_ENV) or bin_dir() / SHIM_NAME)
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is not an installed shim (set {SHIM_ENV}?)")
    return str(path)


@dataclass(frozen=True)
class Result:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run(
    args: Sequence[str],
    *,
    name: str = "serfbridge",
    env: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> Result:
    """Run the installed command ``name`` with ``args``; ``env`` is added to ours."""
    proc = subprocess.run(
        [command(name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
