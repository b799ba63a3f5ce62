"""The event-handler entry: parsing what Serf gives it, finding the daemon, handing over."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from serfbridge.defaults import HANDLER_SOCKET as DEFAULT_SOCKET
from serfbridge.handler import SerfEvent, hand_over, parse_event, socket_path


@pytest.mark.parametrize(
    ("env", "stdin", "expected"),
    [
        pytest.param(
            {"SERF_EVENT": "member-join", "SERF_SELF_NAME": "n1"},
            b"n2\t127.0.0.1\t\trole=web\nn3\t127.0.0.1\t\t\n",
            SerfEvent("member-join", "n1", members=("n2", "n3")),
            id="two-members",
        ),
        pytest.param(
            {"SERF_EVENT": "member-update"},
            b"n2\t10.0.0.1\t\ta=b,c=d=e\n",
            SerfEvent("member-update", "", members=("n2",)),
            id="ambiguous-tags",
        ),
        pytest.param(
            {"SERF_EVENT": "user", "SERF_USER_EVENT": "deploy"},
            b"payload\n",
            SerfEvent("user", "", user_event="deploy"),
            id="user-event",
        ),
        pytest.param(
            {"SERF_EVENT": "query", "SERF_QUERY_NAME": "load"},
            b"",
            SerfEvent("query", "", query="load"),
            id="query",
        ),
        pytest.param(
            {"SERF_EVENT": "member-failed"},
            b"\xff\xfe\tx\n",
            SerfEvent("member-failed", "", members=("\ufffd\ufffd",)),
            id="bad-bytes",
        ),
        pytest.param({}, b"", SerfEvent("", ""), id="no-event"),
    ],
)
def test_parse_event(env: dict[str, str], stdin: bytes, expected: SerfEvent) -> None:
    assert parse_event(env, stdin) == expected


def test_only_member_events_matter() -> None:
    assert parse_event({"SERF_EVENT": "member-reap"}, b"").is_member_event
    assert not parse_event({"SERF_EVENT": "user"}, b"").is_member_event


def test_socket_path_from_env_then_config_file_then_default(tmp_path) -> None:
    config = tmp_path / "config"
    config.write_text("SERFBRIDGE_HANDLER_SOCKET=/run/x/from-file.sock\n")
    assert socket_path({"SERFBRIDGE_HANDLER_SOCKET": "/e.sock"}) == "/e.sock"
    assert socket_path({"SERFBRIDGE_CONFIG": str(config)}) == "/run/x/from-file.sock"
    assert socket_path({"SERFBRIDGE_CONFIG": str(tmp_path / "missing")}) == DEFAULT_SOCKET


def test_hand_over_fails_fast_when_no_daemon_listens(tmp_path) -> None:
    assert hand_over(str(tmp_path / "nobody.sock"), SerfEvent("member-join", "n1")) is False


class FakeDaemonSocket:
    """A fake of the daemon's handler socket (the real one is covered in test_to_k8s):
    it records one line and answers ``ok``, or nothing when ``answer`` is empty. A
    context manager: its sockets are closed when the test ends (no ResourceWarning)."""

    def __init__(self, path: str, answer: bytes = b"ok\n") -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen(1)
        self.received: list[dict[str, object]] = []
        self.answer = answer
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn, conn.makefile("rb") as lines:
            self.received.append(json.loads(lines.readline()))
            conn.sendall(self.answer)

    def __enter__(self) -> FakeDaemonSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.thread.join(5)
        self.server.close()


def test_hand_over_sends_the_event_and_waits_for_ok(tmp_path) -> None:
    path = str(tmp_path / "d.sock")
    with FakeDaemonSocket(path) as fake:
        assert hand_over(path, SerfEvent("member-join", "n1", members=("n2",))) is True
    assert fake.received == [{"event": "member-join", "members": ["n2"], "count": 1}]


def test_hand_over_without_an_ok_counts_as_failed(tmp_path) -> None:
    path = str(tmp_path / "d.sock")
    with FakeDaemonSocket(path, answer=b""):
        assert hand_over(path, SerfEvent("member-join", "n1"), timeout=1.0) is False
