"""The handler-socket protocol: the codec (Hypothesis), and the server against garbage,
splits, slow delivery and real local users (``nobody``), over real Unix sockets."""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import stat
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serfbridge import handoff
from serfbridge.errors import HandoffError
from serfbridge.handoff import (
    MAX_REQUEST,
    MEMBER_EVENTS,
    HandoffServer,
    decode_request,
    encode_request,
)
from tests import localusers

names = st.text(max_size=300)
events = st.sampled_from(MEMBER_EVENTS)


# --- the codec ------------------------------------------------------------------------------


@given(events, st.lists(names, max_size=200))
def test_encode_then_decode_keeps_event_count_and_a_prefix_of_names(event, members) -> None:
    line = encode_request(event, members)
    assert line.endswith(b"\n") and len(line) <= MAX_REQUEST
    request = decode_request(line[:-1])
    assert request.event == event and request.count == len(members)
    assert list(request.members) == [m[: handoff.MAX_NAME] for m in members][: len(request.members)]


@given(st.binary(max_size=MAX_REQUEST + 100))
def test_any_bytes_decode_or_raise_only_our_error(data) -> None:
    try:
        request = decode_request(data)
    except HandoffError:
        return
    assert request.event in MEMBER_EVENTS


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | names,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(names, inner, max_size=5),
        max_leaves=30,
    )
)
def test_any_json_decodes_or_raises_only_our_error(obj) -> None:
    for value in (obj, {"event": "member-join", "members": obj}, {"event": obj}):
        with contextlib.suppress(HandoffError):
            decode_request(json.dumps(value).encode())


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"[]", id="empty-list"),
        pytest.param(b"1", id="number"),
        pytest.param(b"[" * 60_000, id="deep-nesting"),
        pytest.param(b'{"event": "member-join\\n2026 INFO forged"}', id="newline-in-name"),
        pytest.param(b'{"event": "user"}', id="not-a-member-event"),
        pytest.param(b'{"event": "member-join", "members": [1]}', id="member-not-a-name"),
        pytest.param(b'{"event": "member-join", "count": -1}', id="negative-count"),
        pytest.param(b'{"event": "member-join", "count": true}', id="bool-count"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"1" * 5000, id="huge-number"),
    ],
)
def test_bad_requests_raise_our_error(line: bytes) -> None:
    with pytest.raises(HandoffError):
        decode_request(line)


# --- the server, in this process -------------------------------------------------------------


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class Served:
    """A running server and what it saw."""

    def __init__(self, path: str, **options) -> None:
        self.events: list[handoff.HandOff] = []
        self.refused: list[str] = []
        self.server = HandoffServer(
            path,
            self.events.append,
            on_refused=self.refused.append,
            **{"trusted": frozenset({0, os.geteuid()}), "deadline": 0.3, **options},
        ).start()
        self.path = path

    def hand_over_works(self) -> float:
        """Seconds one proper hand-over took; fails the test if it did not work."""
        before = len(self.events)
        start = time.monotonic()
        assert handoff.hand_over(self.path, "member-join", members=("n2",), timeout=1.0)
        took = time.monotonic() - start
        deadline = time.monotonic() + 1
        while len(self.events) == before and time.monotonic() < deadline:
            time.sleep(0.005)
        assert len(self.events) == before + 1
        return took


@pytest.fixture(scope="module")
def recorder() -> Iterator[Recorder]:
    handler = Recorder()
    logger = logging.getLogger("serfbridge.handoff")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)


@pytest.fixture(scope="module")
def served(tmp_path_factory, recorder) -> Iterator[Served]:
    s = Served(str(tmp_path_factory.mktemp("handoff") / "h.sock"))
    yield s
    s.server.stop()


def exchange(path: str, chunks: list[bytes], pause: float, *, close: bool) -> bytes:
    """Send ``chunks`` with ``pause`` between them; return what the server answered."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        sock.connect(path)
        try:
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(pause)
            if close:
                sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            return b"<reset>"  # the server gave up on us: also an allowed outcome
        return answer


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True) if b > a]


stream_bytes = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda e, m: encode_request(e, m), events, st.lists(names, max_size=20)),
    st.builds(lambda b: b + b"\n", st.binary(max_size=200)),
    st.just(b"[" * 60_000),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    data=stream_bytes,
    cuts=st.lists(st.integers(0, 70_000), max_size=6),
    pause=st.sampled_from([0.0, 0.0, 0.01, 0.08]),
    close=st.booleans(),
)
def test_fuzz_only_our_answers_within_bounded_time_and_the_server_keeps_serving(
    served: Served, recorder: Recorder, data: bytes, cuts: list[int], pause: float, close: bool
) -> None:
    recorder.records.clear()
    start = time.monotonic()
    answer = exchange(served.path, splits(data, cuts), pause, close=close)
    took = time.monotonic() - start
    assert answer in (b"ok\n", b"<reset>") or answer.startswith(b"error: "), answer
    assert took < len(cuts) * pause + 0.3 + 1.0  # the deadline, plus slack for a busy host
    assert not [r for r in recorder.records if r.levelno >= logging.ERROR]
    assert set(served.refused) <= {"bad-request"}
    assert served.hand_over_works() < 1.0


def test_one_slow_client_blocks_no_one(tmp_path) -> None:
    s = Served(str(tmp_path / "h.sock"), deadline=2.0)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as drip:
            drip.connect(s.path)
            for _ in range(8):  # a byte now and then keeps it inside its deadline
                drip.sendall(b"{")
                assert s.hand_over_works() < 0.5
                time.sleep(0.2)
            drip.settimeout(3)
            assert drip.recv(100).startswith(b"error: no complete request within 2s")
    finally:
        s.server.stop()


def test_reads_are_bounded_in_bytes_and_memory(tmp_path) -> None:
    s = Served(str(tmp_path / "h.sock"), deadline=2.0)
    try:
        tracemalloc.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as flood:
            flood.connect(s.path)
            flood.settimeout(3)
            sent = 0
            with pytest.raises(OSError) as err:  # the server stops reading, then closes
                for _ in range(64):
                    flood.sendall(b"x" * 65536)
                    sent += 65536
                while flood.recv(4096):
                    pass
                raise ConnectionResetError
            assert err.value.errno in (errno.EPIPE, errno.ECONNRESET)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 1_000_000
        assert s.refused == ["bad-request"]
        assert s.hand_over_works() < 0.5
    finally:
        s.server.stop()


def test_more_clients_than_slots_wait_for_a_slot(tmp_path) -> None:
    s = Served(str(tmp_path / "h.sock"), deadline=0.5, max_clients=2)
    try:
        silent = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(3)]
        for sock in silent:
            sock.connect(s.path)
        assert s.hand_over_works() < 1.5  # waits for a silent client's deadline at most
        for sock in silent:
            sock.close()
    finally:
        s.server.stop()


# --- real local users -------------------------------------------------------------------------


NOBODY_CONNECTS = """
import socket
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(2)
try:
    sock.connect({path!r})
    print("answer", sock.recv(100))  # a refusal comes before we say anything
except OSError as exc:
    print("oserror", exc.errno)
"""


def test_the_socket_is_0600_and_nobody_cannot_connect() -> None:
    with localusers.shared_dir() as d:
        s = Served(str(d / "h.sock"))
        try:
            assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o600
            out = localusers.run_as("nobody", NOBODY_CONNECTS.format(path=s.path)).stdout
            assert out.strip() == f"oserror {errno.EACCES}"
            assert s.events == [] and s.hand_over_works() < 0.5
        finally:
            s.server.stop()


def test_an_open_socket_still_refuses_a_uid_it_does_not_trust() -> None:
    with localusers.shared_dir() as d:
        s = Served(str(d / "h.sock"), open_to_others=True)
        try:
            assert stat.S_IMODE(os.stat(s.path).st_mode) == 0o666
            out = localusers.run_as("nobody", NOBODY_CONNECTS.format(path=s.path)).stdout
            assert out.strip() == "answer b'denied\\n'"
            assert s.events == [] and s.refused == ["denied"]
        finally:
            s.server.stop()


def test_a_trusted_agent_user_hands_over() -> None:
    with localusers.shared_dir() as d:
        trusted = frozenset({0, localusers.uid_of("nobody")})
        s = Served(str(d / "h.sock"), open_to_others=True, trusted=trusted)
        try:
            code = (
                "from serfbridge import handoff\n"
                f"print(handoff.hand_over({s.path!r}, 'member-failed', members=('n3',)))"
            )
            assert localusers.run_as("nobody", code).stdout.strip() == "True"
            assert [(e.event, e.members) for e in s.events] == [("member-failed", ("n3",))]
        finally:
            s.server.stop()


def test_a_stale_socket_file_is_replaced_and_removed_at_stop(tmp_path: Path) -> None:
    path = tmp_path / "h.sock"
    path.write_text("left over by a killed daemon")
    s = Served(str(path))
    assert s.hand_over_works() < 0.5
    s.server.stop()
    assert not path.exists()


def test_the_accept_loop_survives_running_out_of_descriptors(tmp_path) -> None:
    s = Served(str(tmp_path / "h.sock"))
    try:
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as waiting,
            localusers.descriptors_exhausted() as release,
        ):
            waiting.connect(s.path)  # queued: the server cannot accept it now
            waiting.sendall(encode_request("member-join", ["n2"]))
            time.sleep(0.5)
            assert "exhausted" in s.refused
            release(20)
            waiting.settimeout(2)
            assert waiting.recv(16) == b"ok\n"  # accepted as soon as descriptors came back
        assert s.server._thread.is_alive()
    finally:
        s.server.stop()
    assert threading.active_count() < 50
