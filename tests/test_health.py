"""The HTTP listener against slow and many clients, and against running out of file
descriptors, in this process over real sockets (the daemon-level flood by ``nobody`` is
in test_hostile_locals)."""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Iterator

import pytest

from serfbridge import health
from serfbridge.health import HealthServer, Metrics
from tests.lab.serfagents import free_port
from tests.localusers import descriptors_exhausted


@pytest.fixture
def server(monkeypatch) -> Iterator[HealthServer]:
    monkeypatch.setattr(health, "READ_TIMEOUT", 0.5)
    s = HealthServer(
        f"127.0.0.1:{free_port()}", Metrics(), ready=lambda: (True, "ready"), status=lambda: {}
    ).start()
    yield s
    s.stop()


def get(s: HealthServer, path: str = "/healthz", timeout: float = 2.0) -> tuple[int, float]:
    start = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{s.port}{path}", timeout=timeout) as r:
        r.read()
        return r.status, time.monotonic() - start


def refusals(s: HealthServer, reason: str) -> float:
    value = s.metrics.registry.get_sample_value(
        "serfbridge_local_refusals_total", {"listener": "http", "reason": reason}
    )
    return value or 0.0


def half_open(s: HealthServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", s.port))
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never the blank line
    return sock


def test_a_silent_client_is_dropped_after_the_read_timeout(server) -> None:
    with half_open(server) as sock:
        sock.settimeout(3)
        start = time.monotonic()
        assert sock.recv(100) == b""  # closed by the server, nothing answered
        assert 0.4 < time.monotonic() - start < 2.5


def test_past_the_cap_the_oldest_connection_goes_and_a_probe_gets_through(server) -> None:
    socks = [half_open(server) for _ in range(health.MAX_CONNECTIONS + 20)]
    try:
        code, took = get(server)
        assert code == 200 and took < 0.5
        assert refusals(server, "cap") >= 20
        socks[0].settimeout(2)
        assert socks[0].recv(100) == b""  # the oldest was cut off
    finally:
        for sock in socks:
            sock.close()


def test_the_accept_loop_survives_running_out_of_descriptors(server) -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as waiting,
        descriptors_exhausted() as release,
    ):
        waiting.connect(("127.0.0.1", server.port))  # queued: no descriptor to accept it
        waiting.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        time.sleep(0.5)
        assert refusals(server, "exhausted") >= 1
        release(20)
        waiting.settimeout(3)
        assert waiting.recv(100).startswith(b"HTTP/1.0 200")
    assert get(server)[0] == 200


def test_an_oversized_request_line_still_gets_414(server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(b"GET /" + b"a" * 70_000 + b" HTTP/1.0\r\n\r\n")
        sock.settimeout(3)
        assert sock.recv(100).startswith(b"HTTP/1.0 414")
