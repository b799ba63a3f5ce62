"""``rpc.transport``: the in-memory pair and TCP, behind the one ``Transport`` interface.

No process: TCP runs against a listening socket in this test process. Both kinds must
agree on the contract ``rpc.wire`` relies on: b"" once the peer closed, ``RPCTimeout``
when nothing came in time, ``TransportError`` when sending into a closed connection.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from serfbridge.errors import RPCTimeout, TransportError, UntrustedAgent, UsageError
from serfbridge.rpc.transport import Transport, connect_tcp, memory_pair, split_addr

OURS = frozenset({0, os.geteuid()})


@pytest.fixture
def tcp_pair() -> Iterator[tuple[Transport, socket.socket]]:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        client = connect_tcp(f"127.0.0.1:{port}", 2.0, trusted=OURS)
        peer, _ = server.accept()
        with peer:
            yield client, peer
        client.close()


class _SocketEnd:
    """The far end of a TCP pair, seen through the same three calls."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)


@pytest.fixture(params=["memory", "tcp"])
def pair(request, tcp_pair):
    if request.param == "memory":
        near, far = memory_pair()
        return near, far
    near, sock = tcp_pair
    return near, _SocketEnd(sock)


def test_bytes_sent_arrive_in_order_and_in_pieces_no_larger_than_asked(pair) -> None:
    near, far = pair
    far.send(b"abc")
    far.send(b"def")
    got = b""
    while len(got) < 6:
        chunk = near.receive(4, 1.0)
        assert 0 < len(chunk) <= 4
        got += chunk
    assert got == b"abcdef"


def test_nothing_in_time_is_an_rpc_timeout(pair) -> None:
    near, _ = pair
    started = time.monotonic()
    with pytest.raises(RPCTimeout, match="did not answer in time"):
        near.receive(10, 0.1)
    assert 0.09 <= time.monotonic() - started < 1.0


def test_the_peer_closing_reads_as_empty_bytes_after_what_it_sent(pair) -> None:
    near, far = pair
    far.send(b"last")
    far.close()
    assert near.receive(10, 1.0) == b"last"
    assert near.receive(10, 1.0) == b""


def test_close_wakes_a_receive_blocked_in_another_thread(pair) -> None:
    near, _ = pair
    got: list[object] = []

    def read() -> None:
        try:
            got.append(near.receive(10, 5.0))
        except TransportError as exc:
            got.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.1)
    near.close()
    reader.join(2)
    assert not reader.is_alive()
    assert got == [b""] or isinstance(got[0], TransportError)


def test_memory_send_after_either_end_closed_is_a_transport_error() -> None:
    near, far = memory_pair("fake:x")
    far.close()
    with pytest.raises(TransportError, match="lost the connection to fake:x"):
        near.send(b"x")
    with pytest.raises(TransportError):
        far.send(b"x")


def test_tcp_to_a_closed_port_is_a_transport_error() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
    with pytest.raises(TransportError, match=f"cannot reach the serf agent at 127.0.0.1:{port}"):
        connect_tcp(f"127.0.0.1:{port}", 1.0, trusted=OURS)


def test_tcp_to_a_port_held_by_an_untrusted_user_sends_nothing() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with pytest.raises(UntrustedAgent, match="nothing was sent"):
            connect_tcp(f"127.0.0.1:{port}", 1.0, trusted=frozenset({65534}))


@pytest.mark.parametrize(
    ("addr", "expected"),
    [
        pytest.param("127.0.0.1:7373", ("127.0.0.1", 7373), id="v4"),
        pytest.param("[::1]:7373", ("::1", 7373), id="v6"),
        pytest.param(":7373", ("127.0.0.1", 7373), id="no-host"),
        pytest.param("serf.lan:1", ("serf.lan", 1), id="name-lowest-port"),
    ],
)
def test_split_addr(addr: str, expected: tuple[str, int]) -> None:
    assert split_addr(addr) == expected


@pytest.mark.parametrize(
    "addr",
    [
        pytest.param("127.0.0.1", id="no-port"),
        pytest.param("127.0.0.1:0", id="port-0"),
        pytest.param("127.0.0.1:65536", id="port-too-big"),
        pytest.param("127.0.0.1:x", id="port-not-a-number"),
    ],
)
def test_split_addr_refuses_malformed(addr: str) -> None:
    with pytest.raises(UsageError, match="host:port"):
        split_addr(addr)
