"""What users install: the wheel carries every module of the source tree and nothing else,
and a plain ``pip install`` in a fresh venv gives console scripts that start.

Both build from a scratch copy of the files the build reads, so a stale ``build/`` in the
checkout cannot hide a missing module (or smuggle in a deleted one).
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import serfbridge

REPO = Path(__file__).resolve().parent.parent
#: What setup.cfg and pyproject.toml make the build read.
BUILD_INPUTS = ("setup.cfg", "pyproject.toml", "README.md", "serfbridge", "handlers")

pytestmark = pytest.mark.integration


def source_modules(root: Path) -> set[str]:
    return {
        p.relative_to(root).as_posix()
        for p in (root / "serfbridge").rglob("*.py")
        if "__pycache__" not in p.parts
    }


def console_scripts() -> list[str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return [line.split("=")[0].strip() for line in lines]


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    copy = tmp_path_factory.mktemp("src")
    for name in BUILD_INPUTS:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, copy / name)
    return copy


def pip(python: Path | str, *args: str) -> None:
    proc = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_wheel_ships_exactly_the_source_modules_and_the_shim(source_copy, tmp_path) -> None:
    pip(sys.executable, "wheel", "--no-deps", "-w", str(tmp_path), str(source_copy))
    (wheel,) = tmp_path.glob("serfbridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n for n in names if n.endswith(".py")}
    stray = sorted(shipped - source_modules(source_copy))
    missing = sorted(source_modules(source_copy) - shipped)
    assert not stray, f"in the wheel but not in the source tree: {stray}"
    assert not missing, f"in the source tree but missing from the wheel: {missing}"
    data = f"serfbridge-{serfbridge.__version__}.data"
    assert f"{data}/scripts/serf-event-handler" in names
    tops = {n.split("/")[0] for n in names if not n.startswith(data)}
    assert tops == {"serfbridge", f"serfbridge-{serfbridge.__version__}.dist-info"}


def test_pip_install_in_a_fresh_venv_gives_working_commands(source_copy, tmp_path) -> None:
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    pip(env_dir / "bin" / "python", "install", str(source_copy))
    scripts = console_scripts()
    assert scripts == ["serfbridge", "serfbridge-handle"]
    for name in scripts:
        proc = subprocess.run(
            [str(env_dir / "bin" / name), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"{name}, version {serfbridge.__version__}\n"
    assert (env_dir / "bin" / "serf-event-handler").stat().st_mode & 0o111
