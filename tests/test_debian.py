"""The Debian package: its metadata agrees with setup.cfg, and the built .deb holds what
docs/operations.md promises at the paths it names.

The build is the real one (`.ci/build-deb`, what `make deb` runs: debhelper, pybuild,
lintian with errors fatal); installing and running it is `make test-deb`.
"""

from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

import serfbridge

REPO = Path(__file__).resolve().parent.parent
DEBIAN = REPO / "debian"


def floors_in_setup_cfg() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    lines = parser["options"]["install_requires"].split()
    return dict(line.split(">=") for line in lines)


def floors_in_control() -> dict[str, str]:
    text = (DEBIAN / "control").read_text()
    return dict(re.findall(r"python3-([a-z0-9-]+) \(>= ([0-9.]+)\)", text))


def test_changelog_version_is_the_package_version() -> None:
    first = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert first.startswith(f"serfbridge ({serfbridge.__version__}) ")


def test_depends_are_debian_packages_with_the_setup_cfg_floors() -> None:
    assert floors_in_control() == floors_in_setup_cfg()


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "build-deb"), str(out)],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out / f"serfbridge_{serfbridge.__version__}_all.deb"


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


@pytest.mark.integration
def test_deb_installs_the_promised_paths(deb: Path) -> None:
    paths = {line.split()[-1].removeprefix(".") for line in dpkg_deb("-c", str(deb)).splitlines()}
    for path in ("/usr/bin/serfbridge", "/usr/bin/serfbridge-handle",
                 "/usr/lib/serfbridge/serf-event-handler", "/lib/systemd/system/serfbridge.service",
                 "/etc/serfbridge/config", "/etc/serf/serfbridge.json",
                 "/usr/share/doc/serfbridge/operations.md",
                 "/usr/lib/python3/dist-packages/serfbridge/rpc/__init__.py"):  # fmt: skip
        assert path in paths
    assert "/usr/bin/serf-event-handler" not in paths  # the shim has one fixed path
    assert not [p for p in paths if "/tests/" in p or p.endswith("/tests")]
    fields = dpkg_deb("-f", str(deb), "Architecture", "Depends")
    assert "Architecture: all" in fields
    assert floors_in_control().keys() <= set(re.findall(r"python3-([a-z0-9-]+) \(", fields))


@pytest.mark.integration
def test_deb_unit_handler_config_and_conffiles(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tmp_path)], check=True)
    unit = (tmp_path / "lib/systemd/system/serfbridge.service").read_text()
    assert "\nExecStart=/usr/bin/serfbridge run\n" in unit
    assert "\nConditionPathExists=/etc/serfbridge/kubeconfig\n" in unit
    assert "Documentation=file:///usr/share/doc/serfbridge/operations.md" in unit
    handler = (tmp_path / "etc/serf/serfbridge.json").read_text()
    assert '"/usr/lib/serfbridge/serf-event-handler"' in handler
    conffiles = (tmp_path / "DEBIAN/conffiles").read_text().split()
    assert sorted(conffiles) == ["/etc/serf/serfbridge.json", "/etc/serfbridge/config"]
    assert (
        "deb-systemd-helper enable 'serfbridge.service'"
        in (tmp_path / "DEBIAN/postinst").read_text()
    )
