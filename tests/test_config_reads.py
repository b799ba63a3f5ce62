"""Every file we read is read bounded and fails in one line; so do odd numbers and replies.

Issue 13, defect 9: a non-UTF-8 config, key file or credential, ``--config /dev/zero``,
``query --timeout 1e30`` and a malformed ``/status`` each gave a traceback or ate memory.
CliRunner through the real CLI, real files and devices; the one hand-written fake is the
HTTP server in ``FakeStatusServer``, since our daemon never sends a malformed /status.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from serfbridge import config, kube, logs
from serfbridge.cli import cli
from serfbridge.errors import ConfigError
from tests.lab import commands
from tests.lab.serfagents import free_port

NOT_UTF8 = b"SERFBRIDGE_CLUSTER=lab\n\xff\xfe S3cr3t\n"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name in [*config.ENV_NAMES.values(), "SERFBRIDGE_CONFIG", "CREDENTIALS_DIRECTORY"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(logs, "configure", lambda *a, **k: None)
    return CliRunner()


def one_line(result: Result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def members(runner: CliRunner, *global_args: str, env: dict[str, str] | None = None) -> Result:
    """``members`` against a port where nothing listens: exit 1 if the settings were fine."""
    args = [*global_args, "--rpc-addr", f"127.0.0.1:{free_port()}", "members"]
    return runner.invoke(cli, args, env=env or {})


# --- the config file ------------------------------------------------------------------------


def test_config_dev_zero_is_one_bounded_read(runner: CliRunner) -> None:
    tracemalloc.start()
    started = time.monotonic()
    try:
        result = members(runner, "--config", "/dev/zero")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line(result, 2, "config file /dev/zero is larger than 65536 bytes")
    assert time.monotonic() - started < 5
    assert peak < 4 * 1024 * 1024, peak


def test_config_not_utf8(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_bytes(NOT_UTF8)
    line = one_line(members(runner, "--config", str(path)), 2, "is not UTF-8 text (byte 23)")
    assert "S3cr3t" not in line


def test_config_directory_and_fifo(runner: CliRunner, tmp_path: Path) -> None:
    one_line(members(runner, "--config", str(tmp_path)), 2, "cannot read config file")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    result = members(runner, "--config", str(fifo))  # no writer: read as empty, no hang
    one_line(result, 1, "cannot reach the serf agent")
    assert time.monotonic() - started < 5


def test_config_larger_than_the_bound(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("# padding\n" * (config.MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="larger than 65536 bytes"):
        config.read_config_file(str(path))
    path.write_text("# padding\n" * (config.MAX_CONFIG_BYTES // 10 - 3) + "SERFBRIDGE_CLUSTER=a\n")
    assert config.read_config_file(str(path)) == {"cluster": "a"}


def test_a_path_with_control_characters_stays_on_one_line(runner: CliRunner) -> None:
    one_line(members(runner, "--config", "/nonexistent/a\nb"), 2, "a\\nb does not exist")


# --- the key's files ------------------------------------------------------------------------


def test_auth_file_not_utf8_too_big_missing(runner: CliRunner, tmp_path: Path) -> None:
    bad = tmp_path / "key"
    bad.write_bytes(b"\xffk3y\n")
    empty = str(tmp_path / "empty")
    Path(empty).write_text("")
    base = ["--config", empty]
    one_line(members(runner, *base, "--rpc-auth-file", str(bad)), 2, "--rpc-auth-file", "UTF-8")
    one_line(members(runner, *base, "--rpc-auth-file", "/dev/zero"), 2, "larger than 4096")
    one_line(members(runner, *base, "--rpc-auth-file", str(tmp_path / "no")), 2, "does not exist")


def test_credential_not_utf8_or_too_big(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "serf-rpc-auth").write_bytes(b"\xc3(\n")
    empty = str(tmp_path / "empty")
    Path(empty).write_text("")
    env = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    one_line(members(runner, "--config", empty, env=env), 2, "credential", "not UTF-8")
    (tmp_path / "serf-rpc-auth").write_text("k" * 5000)
    one_line(members(runner, "--config", empty, env=env), 2, "credential", "larger than 4096")


# --- kubeconfig -----------------------------------------------------------------------------


def test_kubeconfig_must_be_a_bounded_regular_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="/dev/zero is not a regular file"):
        kube.load_client("/dev/zero")
    big = tmp_path / "big"
    with big.open("wb") as f:
        f.truncate(config.MAX_KUBECONFIG_BYTES + 1)
    with pytest.raises(ConfigError, match="larger than"):
        kube.load_client(f"{tmp_path / 'missing'}:{big}")  # every file of a list is checked
    with pytest.raises(ConfigError, match="not a regular file"):
        kube.load_client(None, env={"KUBECONFIG": str(tmp_path)})


def test_kubeconfig_errors_never_quote_the_file(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text("users:\n- name: a\n  user: {token: S3cr3tT0ken: [\n")
    with pytest.raises(ConfigError) as info:
        kube.load_client(str(path))
    assert "S3cr3tT0ken" not in str(info.value) and "not valid YAML (line" in str(info.value)
    path.write_bytes(b"token: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 7\)"):
        kube.load_client(str(path))


def test_sync_with_dev_zero_kubeconfig_exits_2(runner: CliRunner, tmp_path: Path) -> None:
    empty = str(tmp_path / "empty")
    Path(empty).write_text("")
    result = runner.invoke(cli, ["--config", empty, "--kubeconfig", "/dev/zero", "sync"])
    one_line(result, 2, "kubeconfig /dev/zero is not a regular file")


# --- numbers that are no settings -----------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["query", "q", "--timeout", "1e30"],
        ["query", "q", "--timeout", "nan"],
        ["query", "q", "--timeout", "-1"],
        ["query", "q", "--timeout", "inf"],
        ["sync", "--timeout", "1e30"],
        ["sync", "--timeout", "nan"],
    ],
)
def test_durations_are_finite_and_bounded(runner: CliRunner, args: list[str]) -> None:
    result = runner.invoke(cli, ["--rpc-addr", f"127.0.0.1:{free_port()}", *args])
    one_line(result, 2, "--timeout must be from 0 to 3600 seconds")


def test_query_timeout_at_the_bound_is_accepted(runner: CliRunner) -> None:
    result = runner.invoke(
        cli, ["--rpc-addr", f"127.0.0.1:{free_port()}", "query", "q", "--timeout", "3600"]
    )
    one_line(result, 1, "cannot reach the serf agent")


@pytest.mark.parametrize("command", ["stream", "monitor"])
def test_negative_counts_are_refused(runner: CliRunner, command: str) -> None:
    result = runner.invoke(cli, [command, "--count", "-1"])
    assert result.exit_code == 2 and "--count" in result.stderr


# --- `status` and what answers on the daemon's address --------------------------------------


class FakeStatusServer:
    """A FAKE daemon: serves one fixed /status body (ours never sends a malformed one)."""

    def __init__(self, body: bytes, code: int = 200) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeStatusServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


GOOD = {
    "node": "n1",
    "cluster": "lab",
    "ready": True,
    "reason": "synced",
    "budget_used": 42,
    "tag_limit": 512,
    "last_sync": {"to-k8s": 1.7e9},
    "publishes": [{"s": "web", "p": "30080", "d": "shop", "t": "k8s=lab/default/shop/80"}],
    "left_out": [],
    "errors": {},
}


@pytest.mark.parametrize(
    ("body", "code", "why"),
    [
        pytest.param(b"<html>", 200, "not JSON", id="not-json"),
        pytest.param(b"\xff\xfe", 200, "not JSON", id="not-utf8"),
        pytest.param(b"[1, 2]", 200, "not a JSON object", id="a-list"),
        pytest.param(b'{"publishes": [1]}', 200, "an entry of publishes lacks", id="bad-row"),
        pytest.param(b'{"left_out": [{"port": 1}]}', 200, "left_out lacks", id="short-row"),
        pytest.param(b'{"last_sync": {"to-k8s": "x"}}', 200, "last_sync", id="bad-time"),
        pytest.param(b'{"last_sync": {"to-k8s": 1e300}}', 200, "last_sync", id="huge-time"),
        pytest.param(b'{"errors": []}', 200, "errors is not a dict", id="bad-type"),
        pytest.param(b'{"node": 5}', 200, "node is not a str", id="number-name"),
        pytest.param(b"{}", 500, "HTTP 500", id="http-500"),
        pytest.param(b" " * (5 * 1024 * 1024), 200, "over 4194304 bytes", id="oversized"),
    ],
)
def test_malformed_status_is_one_line_exit_1(
    runner: CliRunner, tmp_path: Path, body: bytes, code: int, why: str
) -> None:
    empty = str(tmp_path / "empty")
    Path(empty).write_text("")
    with FakeStatusServer(body, code) as fake:
        result = runner.invoke(cli, ["--config", empty, "status", "--http-addr", fake.addr])
    one_line(result, 1, why)


def test_wellformed_status_is_printed(runner: CliRunner, tmp_path: Path) -> None:
    empty = str(tmp_path / "empty")
    Path(empty).write_text("")
    with FakeStatusServer(json.dumps(GOOD).encode()) as fake:
        result = runner.invoke(cli, ["--config", empty, "status", "--http-addr", fake.addr])
    assert result.exit_code == 0, result.output
    assert "publishes: web 30080 shop (k8s=lab/default/shop/80)" in result.output
    assert f"source: daemon at {fake.addr}" in result.output


# --- what serf gives the handler ----------------------------------------------------------


def test_handle_reads_a_bounded_stdin(tmp_path: Path) -> None:
    """``handle`` with an endless stdin (/dev/zero) under a 1 GiB address-space limit: an
    unbounded read would die of MemoryError; a bounded one reaches the kubeconfig check."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    empty = tmp_path / "empty"
    empty.write_text("")
    env = {**os.environ, "SERF_EVENT": "member-join", "HOME": str(tmp_path)}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    socket_path = str(tmp_path / "no.sock")
    argv = [
        commands.command(),
        "--config",
        str(empty),
        "--kubeconfig",
        "/dev/zero",
        "handle",
        "--handler-socket",
        socket_path,
    ]
    with open("/dev/zero", "rb") as zero:
        done = subprocess.run(
            argv,
            stdin=zero,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            preexec_fn=limit,
        )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "error: kubeconfig /dev/zero is not a regular file"
