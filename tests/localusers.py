"""Real local users for the tests: run a small stdlib-only Python script as ``nobody``.

``setpriv`` switches uid, gid and groups for one process; the script runs with the
system Python (a venv under /root would be out of that user's reach) and finds
``serfbridge`` in a world-readable copy of the package, wherever the checkout lives.
Paths the user must reach live in ``shared_dir``, a world-traversable directory
(pytest's own tmp dirs are 0700).
"""

from __future__ import annotations

import atexit
import errno
import os
import pwd
import resource
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "/usr/bin/python3"


def uid_of(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def as_user(user: str, argv: Sequence[str]) -> list[str]:
    group = {"nobody": "nogroup"}.get(user, user)
    return ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", *argv]


_COPY: list[Path] = []


def _readable_package_root() -> Path:
    """A directory holding a copy of ``serfbridge`` that any user can read (made once)."""
    if not _COPY:
        root = Path(tempfile.mkdtemp(prefix="serfbridge-pkg-"))
        shutil.copytree(
            ROOT / "serfbridge", root / "serfbridge", ignore=shutil.ignore_patterns("__pycache__")
        )
        for path in [root, *root.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        atexit.register(shutil.rmtree, root, True)
        _COPY.append(root)
    return _COPY[0]


def python_as(user: str, code: str) -> list[str]:
    prelude = f"import sys; sys.path.insert(0, {str(_readable_package_root())!r})\n"
    return as_user(user, [PYTHON, "-c", prelude + code])


def run_as(user: str, code: str, *, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        python_as(user, code), capture_output=True, text=True, timeout=timeout, check=False
    )


def start_as(user: str, code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        python_as(user, code), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Terminate by its own PID and collect its output."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()


@contextmanager
def shared_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="serfbridge-shared-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def descriptors_exhausted(limit: int = 256) -> Iterator[Callable[[int], None]]:
    """This process out of file descriptors (as a local user's flood leaves a daemon):
    the soft limit lowered to ``limit`` and every free descriptor taken. Yields
    ``release(n)``, which gives ``n`` back; all are restored on exit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    hog: list[int] = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        try:
            while True:
                hog.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as exc:
            assert exc.errno == errno.EMFILE

        def release(n: int) -> None:
            for fd in hog[:n]:
                os.close(fd)
            del hog[:n]

        yield release
    finally:
        for fd in hog:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
