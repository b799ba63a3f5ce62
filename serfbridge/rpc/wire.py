"""One open RPC connection: a ``Transport`` plus its protocol core, and THE read loop.

Used by ``rpc.client`` (the command connection) and ``rpc.hub`` (the stream
connection). ``Wire.read_events`` is the only place bytes are read and fed to the core;
the core's typed events come out unchanged. ``dial`` opens one with backoff. The core is
guarded by a lock, so one thread may read while others queue requests.

This module must not build or parse wire messages (``protocol.py`` does) and must not
dial sockets itself (``transport.py`` does).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

import tenacity

from serfbridge.errors import RPCTimeout, TransportError
from serfbridge.rpc.events import Event, Ready, Reply, agent_error
from serfbridge.rpc.protocol import Connection
from serfbridge.rpc.transport import Connector, Transport

READ_BYTES = 65536


class Wire:
    """A handshaken (and authenticated) connection. ``open`` makes one."""

    def __init__(self, transport: Transport, core: Connection, *, name: str) -> None:
        self.transport, self.core, self.name = transport, core, name
        self._lock = threading.Lock()

    @classmethod
    def open(cls, connect: Connector, *, auth_key: str | None, timeout: float, name: str) -> Wire:
        wire = cls(connect(timeout), Connection(auth_key=auth_key), name=name)
        try:
            wire.flush()
            wire._wait_ready(time.monotonic() + timeout)
        except BaseException:
            wire.close()
            raise
        return wire

    def _wait_ready(self, deadline: float) -> None:
        while True:
            for event in self.read_events(deadline):
                if isinstance(event, Reply) and event.error:
                    raise agent_error(event.command, event.error)
                if isinstance(event, Ready):
                    return

    def queue(self, command: str, body: Mapping[str, object] | None) -> int:
        """Queue a request in the core (``flush`` sends it); returns its Seq."""
        with self._lock:
            return self.core.send(command, body)

    def flush(self) -> None:
        with self._lock:
            data = self.core.data_to_send()
            if data:
                self.transport.send(data)

    def read_events(self, deadline: float) -> list[Event]:
        """Block until the core has events; ``RPCTimeout`` at ``deadline`` (monotonic)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RPCTimeout(f"the serf agent at {self.name} did not answer in time")
            data = self.transport.receive(READ_BYTES, remaining)
            if not data:
                raise TransportError(f"the serf agent at {self.name} closed the connection")
            with self._lock:
                self.core.receive_data(data)
                events = self.core.next_events()
            self.flush()  # auth goes out right after the handshake reply
            if events:
                return events

    def close(self) -> None:
        self.transport.close()


def dial(
    connect: Connector, *, auth_key: str | None, timeout: float, attempts: int, name: str
) -> Wire:
    """Open a wire, with exponential backoff on transport errors (agent restarting)."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=tenacity.wait_exponential(multiplier=0.05, max=2.0),
        retry=tenacity.retry_if_exception_type(TransportError),
        reraise=True,
    )
    return retrying(Wire.open, connect, auth_key=auth_key, timeout=timeout, name=name)
