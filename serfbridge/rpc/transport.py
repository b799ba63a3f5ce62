"""The byte transport under one RPC connection: an interface, TCP, and in-memory pipes.

``rpc.wire`` reads and writes through a ``Transport`` only, so the same shell runs over
a real agent's TCP port (``connect_tcp``) or over an in-memory pipe to a fake agent in
the tests (``memory_pair``), like httpcore's network backends. This is the only module
that dials a socket, and the only place the peer-user check (``localpeers``) runs: no
byte, the auth key least of all, is sent to a port a stranger holds.

Errors leave as ours: ``TransportError`` (cannot connect, connection lost, closed) and
``RPCTimeout`` (nothing arrived in time). It must not know the protocol.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable
from typing import Protocol

from serfbridge import defaults, localpeers
from serfbridge.errors import RPCTimeout, TransportError, UsageError


class Transport(Protocol):
    """One bidirectional byte stream to an agent."""

    def send(self, data: bytes) -> None:
        """Write all of ``data``; ``TransportError`` when the connection is gone."""

    def receive(self, max_bytes: int, timeout: float) -> bytes:
        """Up to ``max_bytes`` as they arrive; b"" once the peer closed; ``RPCTimeout``
        when nothing came within ``timeout`` seconds."""

    def close(self) -> None:
        """Close both directions; a blocked ``receive`` in another thread returns."""


#: Makes one transport to the agent, given the connect timeout in seconds.
Connector = Callable[[float], Transport]


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) → (host, port); raises UsageError when malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) <= defaults.MAX_PORT:
        raise UsageError(f"RPC address must be host:port, got {addr!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class TcpTransport:
    """A connected TCP socket to the agent whose owner passed the peer-user check."""

    def __init__(self, sock: socket.socket, addr: str) -> None:
        self._sock = sock
        self.addr = addr

    def send(self, data: bytes) -> None:
        try:
            self._sock.sendall(data)
        except OSError as exc:
            raise TransportError(f"lost the connection to {self.addr}: {exc}") from exc

    def receive(self, max_bytes: int, timeout: float) -> bytes:
        try:
            self._sock.settimeout(timeout)
            return self._sock.recv(max_bytes)
        except TimeoutError as exc:
            raise RPCTimeout(f"the serf agent at {self.addr} did not answer in time") from exc
        except OSError as exc:
            raise TransportError(f"lost the connection to {self.addr}: {exc}") from exc

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


def connect_tcp(addr: str, timeout: float, *, trusted: frozenset[int]) -> TcpTransport:
    """Dial ``addr``; before anything is sent, a peer on this host must be a trusted user:
    while the agent restarts, any local user can listen on its port (``localpeers``)."""
    try:
        sock = socket.create_connection(split_addr(addr), timeout=timeout)
        # Requests are small and latency-bound; don't let Nagle hold them back.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise TransportError(f"cannot reach the serf agent at {addr}: {exc}") from exc
    transport = TcpTransport(sock, addr)
    try:
        localpeers.check_agent_owner(sock, trusted, addr=addr)
    except BaseException:
        transport.close()
        raise
    return transport


class _Pipe:
    """One direction of an in-memory connection."""

    def __init__(self) -> None:
        self.ready = threading.Condition()
        self.data = bytearray()
        self.closed = False

    def close(self) -> None:
        with self.ready:
            self.closed = True
            self.ready.notify_all()


class MemoryTransport:
    """One end of an in-memory connection (``memory_pair``); never blocks on send."""

    def __init__(self, inbox: _Pipe, outbox: _Pipe, *, name: str) -> None:
        self._inbox, self._outbox, self.addr = inbox, outbox, name

    def send(self, data: bytes) -> None:
        with self._outbox.ready:
            if self._outbox.closed:
                raise TransportError(f"lost the connection to {self.addr}: closed")
            self._outbox.data.extend(data)
            self._outbox.ready.notify_all()

    def receive(self, max_bytes: int, timeout: float) -> bytes:
        inbox = self._inbox
        with inbox.ready:
            if not inbox.ready.wait_for(lambda: inbox.data or inbox.closed, timeout):
                raise RPCTimeout(f"the serf agent at {self.addr} did not answer in time")
            chunk = bytes(inbox.data[:max_bytes])
            del inbox.data[:max_bytes]
            return chunk  # b"" only when closed and empty

    def close(self) -> None:
        self._inbox.close()
        self._outbox.close()


def memory_pair(name: str = "memory") -> tuple[MemoryTransport, MemoryTransport]:
    """Two connected ends: what one sends, the other receives."""
    there, back = _Pipe(), _Pipe()
    return MemoryTransport(back, there, name=name), MemoryTransport(there, back, name=name)
