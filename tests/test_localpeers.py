"""Who owns a local socket: the /proc/net/tcp reader (pure, and Hypothesis), and the RPC
client against a port squatted by a real ``nobody``."""

from __future__ import annotations

import ipaddress
import os
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from serfbridge import localpeers
from serfbridge.errors import ConfigError, UntrustedAgent
from serfbridge.rpc.client import SerfClient
from tests import localusers
from tests.lab.serfagents import free_port

HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid\n"
V4 = ipaddress.ip_address("127.0.0.1")


def row(local: str, remote: str, state: str, uid: int) -> str:
    return f"   0: {local} {remote} {state} 00000000:00000000 00:00000000 00000000 {uid:5d} 0 1\n"


TABLE = HEADER + "".join(
    [
        row("0100007F:1CCD", "00000000:0000", "0A", 65534),  # 127.0.0.1:7373 listening
        row("0100007F:1CCD", "0100007F:9C40", "01", 65534),  # its end of 40000 -> 7373
        row("0100007F:9C40", "0100007F:1CCD", "01", 0),  # our end
        row("00000000:1CCE", "00000000:0000", "0A", 0),  # 0.0.0.0:7374
    ]
)
TABLE6 = HEADER + row(
    "0000000000000000FFFF00000100007F:1CCF", "00000000000000000000000000000000:0000", "0A", 7
)


def test_the_table_is_read_as_the_kernel_writes_it() -> None:
    rows = localpeers.parse_socket_table(TABLE)
    assert rows[0] == ((V4, 7373), (ipaddress.ip_address("0.0.0.0"), 0), "0A", 65534)
    assert localpeers.parse_socket_table(TABLE6)[0][0] == (V4, 7375)  # v4-mapped -> v4


@pytest.mark.parametrize(
    ("server", "client", "uid"),
    [
        pytest.param((V4, 7373), (V4, 40000), 65534, id="our-connection"),
        pytest.param((V4, 7373), (V4, 40001), 65534, id="listener-fallback"),
        pytest.param((V4, 7374), (V4, 40002), 0, id="wildcard-listener"),
        pytest.param((V4, 7375), (V4, 40003), 7, id="dual-stack-listener"),
        pytest.param((V4, 7376), (V4, 40004), None, id="nobody-listens"),
    ],
)
def test_the_owner_of_the_server_end(server, client, uid) -> None:
    assert localpeers.maybe_server_uid(server, client, tables=[TABLE, TABLE6]) == uid


@given(st.text())
def test_any_text_parses_or_is_skipped(text: str) -> None:
    for local, _remote, _state, uid in localpeers.parse_socket_table(HEADER + text):
        assert isinstance(uid, int) and 0 <= local[1] <= 0xFFFF


def test_trusted_uids_are_root_ourselves_and_the_agent_users() -> None:
    assert localpeers.trusted_uids() == {0, os.geteuid()}
    assert localpeers.trusted_uids(["nobody", "1"]) == {0, os.geteuid(), 65534, 1}
    with pytest.raises(ConfigError, match="no such user"):
        localpeers.trusted_uids(["no-such-user-here"])


SQUATTER = """
import socket, sys, time
server = socket.create_server(({host!r}, {port}), family={family}, dualstack_ipv6={dual})
print("listening", flush=True)
server.settimeout(0.2)
received = 0
end = time.monotonic() + 30
while time.monotonic() < end:
    try:
        conn, _ = server.accept()
    except TimeoutError:
        continue
    conn.settimeout(1)
    try:
        while data := conn.recv(4096):
            received += len(data)
    except OSError:
        pass
    conn.close()
    print("connection", received, flush=True)
"""


def squat(host: str, port: int, *, dual: bool = False):
    family = "socket.AF_INET6" if ":" in host else "socket.AF_INET"
    proc = localusers.start_as(
        "nobody", SQUATTER.format(host=host, port=port, family=family, dual=dual)
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


@pytest.mark.parametrize(
    ("listen", "dual"),
    [pytest.param("127.0.0.1", False, id="ipv4"), pytest.param("::", True, id="dual-stack")],
)
def test_the_client_sends_nothing_to_a_port_nobody_holds(listen: str, dual: bool) -> None:
    port = free_port()
    squatter = squat(listen, port, dual=dual)
    try:
        start = time.monotonic()
        refused = pytest.raises(UntrustedAgent, match=r"uid 65534 \(nobody\).*nothing was sent")
        with SerfClient(f"127.0.0.1:{port}", auth_key="s3cret", timeout=2) as client, refused:
            client.members()
        assert time.monotonic() - start < 1.0
        assert squatter.stdout is not None
        seen = squatter.stdout.readline().split()  # printed once we hung up
    finally:
        localusers.stop(squatter)
    assert seen == ["connection", "0"]  # it was dialled, and got zero bytes


def test_a_configured_agent_user_may_own_the_port() -> None:
    port = free_port()
    squatter = squat("127.0.0.1", port)
    trusted = localpeers.trusted_uids(["nobody"])
    try:
        silent = pytest.raises(Exception, match="did not answer in time")
        with SerfClient(f"127.0.0.1:{port}", timeout=0.5, trusted_uids=trusted) as client, silent:
            client.members()  # the handshake went out; the squatter just reads
        assert squatter.stdout is not None
        seen = squatter.stdout.readline().split()
    finally:
        localusers.stop(squatter)
    assert seen[0] == "connection" and int(seen[1]) > 0


def test_an_unknown_agent_user_is_bad_input() -> None:
    from click.testing import CliRunner

    from serfbridge.cli import cli

    result = CliRunner().invoke(
        cli, ["--config", "/dev/null", "--agent-user", "no-such-user-here", "members"]
    )
    assert result.exit_code == 2
    assert result.output == "error: --agent-user 'no-such-user-here': no such user on this host\n"


def test_agent_users_come_from_the_env_and_the_config_file(tmp_path) -> None:
    from serfbridge import config

    path = tmp_path / "config"
    path.write_text("SERFBRIDGE_AGENT_USER=nobody daemon\n")
    settings = config.merge({}, config.read_config_file(str(path)))
    assert settings.agent_users == {"nobody", "daemon"}
