"""The HTTP listener against slow and many clients, and against running out of file
descriptors, in this process over real sockets (the daemon-level flood by ``nobody`` is
in test_hostile_locals)."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

from serfbridge import health
from serfbridge.errors import ConfigError
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


# --- what each path answers ------------------------------------------------------------------


class Daemonish:
    """What the daemon hands the server: a readiness and a status it can change."""

    def __init__(self) -> None:
        self.state: tuple[bool, str] = (False, "not synced: to-k8s (no pass yet)")
        self.report: dict[str, object] = {"node": "n1", "errors": {}}

    def ready(self) -> tuple[bool, str]:
        return self.state

    def status(self) -> dict[str, object]:
        return self.report


@pytest.fixture
def answering() -> Iterator[tuple[HealthServer, Daemonish]]:
    daemon = Daemonish()
    s = HealthServer(
        f"127.0.0.1:{free_port()}", Metrics(), ready=daemon.ready, status=daemon.status
    ).start()
    yield s, daemon
    s.stop()


def fetch(s: HealthServer, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.port}{path}", timeout=2) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.mark.parametrize(
    ("path", "ready", "code", "ctype", "body"),
    [
        pytest.param("/healthz", False, 200, "text/plain", b"ok\n", id="healthz-even-unready"),
        pytest.param(
            "/readyz",
            False,
            503,
            "text/plain",
            b"not synced: to-k8s (no pass yet)\n",
            id="readyz-503-with-the-reason",
        ),
        pytest.param("/readyz", True, 200, "text/plain", b"ready\n", id="readyz-200"),
        pytest.param("/readyz?verbose", True, 200, "text/plain", b"ready\n", id="query-ignored"),
        pytest.param("/nowhere", True, 404, "text/plain", b"not found\n", id="unknown-404"),
    ],
)
def test_each_path_answers(answering, path, ready, code, ctype, body) -> None:
    s, daemon = answering
    if ready:
        daemon.state = (True, "ready")
    assert fetch(s, path) == (code, ctype, body)


def test_status_is_the_daemons_report_as_json(answering) -> None:
    s, daemon = answering
    daemon.report = {"node": "n1", "errors": {"to-k8s": "KubeForbidden: forbidden"}}
    code, ctype, body = fetch(s, "/status")
    assert (code, ctype) == (200, "application/json")
    assert json.loads(body) == daemon.report


def test_metrics_are_prometheus_text_with_our_names(answering) -> None:
    s, _ = answering
    s.metrics.passes.labels("to-k8s").inc()
    code, ctype, body = fetch(s, "/metrics")
    assert code == 200 and ctype.startswith("text/plain")
    assert b'serfbridge_passes_total{direction="to-k8s"} 1.0' in body


def test_a_taken_address_is_a_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"cannot listen on --http-addr 127.0.0.1:{port}"):
            HealthServer(
                f"127.0.0.1:{port}", Metrics(), ready=lambda: (True, ""), status=lambda: {}
            )
