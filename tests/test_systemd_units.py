"""The units in systemd/ pass `systemd-analyze verify` cleanly, are hardened, and keep
secrets off command lines.

verify checks that every Exec* binary exists, and /usr/local/bin/serfbridge is not
installed on a build machine. So each unit is verified inside a scratch root
(`--root=`): the host's own stock units (targets, slices) are copied in, our units go
to /etc/systemd/system, and only the executables our units name are created, as stubs.
`test_verify_root_still_checks_executables` proves the scratch root does not switch
the check off. A missing systemd-analyze fails (install: `make deps`), never skips.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT_DIR = REPO / "systemd"
UNITS = sorted(UNIT_DIR.glob("*.service"))
EXEC_KEYS = ("ExecStart", "ExecStartPre", "ExecStartPost", "ExecReload", "ExecStop",
             "ExecStopPost", "ExecCondition")  # fmt: skip
HANDLER_PATH = "/usr/local/lib/serfbridge/serf-event-handler"


def parse_unit(path: Path) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment; systemd allows repeated keys."""
    rows, section = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        rows.append((section, key.strip(), value.strip()))
    return rows


def values(path: Path, key: str) -> list[str]:
    return [v for _, k, v in parse_unit(path) if k == key]


def executables(path: Path) -> set[str]:
    """Absolute binaries named by Exec* lines (prefixes like `-`, `@`, `+`, `!` dropped)."""
    found = set()
    for _, key, value in parse_unit(path):
        if key in EXEC_KEYS and value:
            found.add(value.split()[0].lstrip("-@:+!"))
    return found


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze not found: run `make deps` (apt-get install systemd)")
    return tool


def stock_unit_dir() -> Path:
    for candidate in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (candidate / "sysinit.target").exists():
            return candidate
    pytest.fail("no stock systemd units (sysinit.target) on this host: run `make deps`")


def stub(root: Path, binary: str) -> None:
    target = root / binary.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("#!/bin/sh\nexit 0\n")
    target.chmod(0o755)


@pytest.fixture(scope="module")
def verify_root(tmp_path_factory) -> Path:
    """A scratch root: merged /usr, stock units, our units, stubs for our executables."""
    root = tmp_path_factory.mktemp("unit-root")
    for name in ("bin", "sbin", "lib"):
        (root / "usr" / name).mkdir(parents=True, exist_ok=True)
        (root / name).symlink_to(f"usr/{name}")
    shutil.copytree(stock_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(unit, root / "etc/systemd/system" / unit.name)
        for binary in executables(unit):
            stub(root, binary)
    return root


def verify(tool: str, root: Path, unit_name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, "verify", f"--root={root}", unit_name],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_there_are_units():
    assert {u.name for u in UNITS} >= {"serfbridge.service", "serf.service"}


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verify_is_clean(systemd_analyze, verify_root, unit):
    done = verify(systemd_analyze, verify_root, unit.name)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_verify_root_still_checks_executables(systemd_analyze, verify_root):
    broken = verify_root / "etc/systemd/system/serfbridge-selftest.service"
    broken.write_text("[Service]\nExecStart=/usr/local/bin/not-installed-anywhere\nBogus=1\n")
    try:
        done = verify(systemd_analyze, verify_root, broken.name)
    finally:
        broken.unlink()
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "not-installed-anywhere is not executable" in output
    assert "Unknown key 'Bogus'" in output


SERFBRIDGE = UNIT_DIR / "serfbridge.service"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        pytest.param("Type", "notify", id="notify"),
        pytest.param("NotifyAccess", "main", id="notify-access"),
        pytest.param("WatchdogSec", "30", id="watchdog"),
        pytest.param("Restart", "on-failure", id="restart"),
        pytest.param("RestartSec", "2", id="restart-sec"),
        pytest.param("ExecStart", "/usr/local/bin/serfbridge run", id="exec-start"),
        pytest.param("EnvironmentFile", "-/etc/default/serfbridge", id="environment-file"),
        pytest.param("NoNewPrivileges", "yes", id="no-new-privileges"),
        pytest.param("ProtectSystem", "strict", id="protect-system"),
        pytest.param("ProtectHome", "yes", id="protect-home"),
        pytest.param("PrivateTmp", "yes", id="private-tmp"),
        pytest.param("DynamicUser", "yes", id="dynamic-user"),
        pytest.param("RuntimeDirectory", "serfbridge", id="runtime-dir"),
        pytest.param("RuntimeDirectoryMode", "0755", id="runtime-dir-mode"),
        pytest.param("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6", id="address-families"),
        pytest.param("ProtectKernelTunables", "yes", id="kernel-tunables"),
        pytest.param("ProtectControlGroups", "yes", id="cgroups"),
        pytest.param("RestrictNamespaces", "yes", id="namespaces"),
        pytest.param("LockPersonality", "yes", id="personality"),
        pytest.param("MemoryDenyWriteExecute", "yes", id="wx"),
        pytest.param("SystemCallArchitectures", "native", id="syscall-arch"),
        pytest.param("CapabilityBoundingSet", "", id="no-capabilities"),
    ],
)
def test_serfbridge_unit_is_hardened(key, expected):
    assert values(SERFBRIDGE, key) == [expected]


def test_serfbridge_unit_orders_after_serf_and_network():
    for key in ("After", "Wants"):
        words = " ".join(values(SERFBRIDGE, key)).split()
        assert {"serf.service", "network-online.target"} <= set(words), key


def test_secrets_come_in_as_credentials():
    credentials = values(SERFBRIDGE, "LoadCredential")
    assert "serf-rpc-auth:/etc/serfbridge/rpc-auth" in credentials
    assert "kubeconfig:/etc/serfbridge/kubeconfig" in credentials
    assert "KUBECONFIG=%d/kubeconfig" in " ".join(values(SERFBRIDGE, "Environment")).split()


SECRET_ON_COMMAND_LINE = re.compile(r"(^|\s)--?(rpc-auth|encrypt)(=|\s|$)")


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_no_secret_on_a_command_line(unit):
    for _, key, value in parse_unit(unit):
        if key in EXEC_KEYS:
            assert not SECRET_ON_COMMAND_LINE.search(value), f"{key}={value}"
        if key == "Environment":
            assert "SERF_RPC_AUTH=" not in value, value


def test_serf_unit_reads_a_config_dir():
    (start,) = values(UNIT_DIR / "serf.service", "ExecStart")
    assert start == "/usr/bin/serf agent -config-dir=/etc/serf"


def test_serf_config_snippet_names_the_installed_handler():
    snippet = json.loads((UNIT_DIR / "serf-serfbridge.json").read_text())
    assert snippet == {"event_handlers": [HANDLER_PATH]}
    for doc in ("operations.md", "cloudy-sysv.md"):
        assert HANDLER_PATH in (REPO / "docs" / doc).read_text(), doc
