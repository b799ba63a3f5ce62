"""The stream connection: one reader thread, the open subscriptions, and reconnection.

``rpc.client.SerfClient`` opens one ``StreamHub`` on first use of ``stream``,
``monitor`` or ``query``. Its reader thread runs ``Wire.read_events`` (the one read loop)
and routes the core's typed events: replies to the waiting caller, records to their
``Stream``. When the connection drops it re-dials with backoff, redoes handshake and
auth, re-subscribes every open stream, and each stream then yields ``Reconnected``; a
query in flight fails instead (its answers went with the connection).

It must not parse wire messages (``protocol.py``) nor dial sockets (``transport.py``).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Mapping

import tenacity

from serfbridge.errors import RPCError, RPCTimeout, SerfBridgeError, TransportError
from serfbridge.rpc.events import Event, Reply, StreamEnded, StreamRecord, agent_error
from serfbridge.rpc.models import Reconnected
from serfbridge.rpc.stream import Stream
from serfbridge.rpc.transport import Connector
from serfbridge.rpc.wire import Wire, dial

#: How often the reader wakes up with nothing to read, to notice ``close()``.
POLL_SECONDS = 0.5


class _Slot:
    """Where the reader thread leaves one request's reply for its waiting caller."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: Reply | None = None
        self.error: SerfBridgeError | None = None


class StreamHub:
    """The stream connection of one client. Thread-safe."""

    def __init__(
        self, connect: Connector, *, auth_key: str | None, timeout: float, attempts: int, name: str
    ) -> None:
        self._connect, self._auth_key, self.timeout, self.name = connect, auth_key, timeout, name
        self._lock = threading.RLock()
        self._subs: dict[int, Stream] = {}
        self._slots: dict[int, _Slot] = {}
        self._closed = False
        self.reconnects = 0
        self._wire = dial(connect, auth_key=auth_key, timeout=timeout, attempts=attempts, name=name)
        self._thread = threading.Thread(
            target=self._read_loop, name=f"serf-stream-{name}", daemon=True
        )
        self._thread.start()

    def open(self, command: str, body: Mapping[str, object]) -> Stream:
        stream = Stream(self, command, body)
        reply = self._request(command, body, subscribe=stream)
        if reply.error:
            with self._lock:
                self._subs.pop(reply.seq, None)
            raise agent_error(command, reply.error)
        return stream

    def request(self, command: str, body: Mapping[str, object] | None) -> Reply:
        return self._request(command, body, subscribe=None)

    def _request(
        self, command: str, body: Mapping[str, object] | None, *, subscribe: Stream | None
    ) -> Reply:
        slot = _Slot()
        with self._lock:
            if self._closed:
                raise TransportError("client is closed")
            # Registered before the flush, so the reply (and a stream's first records,
            # which may follow the ack at once) always finds its slot.
            seq = self._wire.queue(command, body)
            self._slots[seq] = slot
            if subscribe is not None:
                subscribe.seq = seq
                self._subs[seq] = subscribe
            self._wire.flush()
        if not slot.event.wait(self.timeout):
            with self._lock:
                self._slots.pop(seq, None)
                self._subs.pop(seq, None)
            raise RPCTimeout(f"the serf agent at {self.name} did not answer {command!r} in time")
        if slot.error is not None:
            raise slot.error
        assert slot.reply is not None
        return slot.reply

    def stop(self, stream: Stream) -> None:
        with self._lock:
            if self._subs.get(stream.seq) is not stream:
                return
            del self._subs[stream.seq]
        if stream.command != "query":  # a query ends by itself at its deadline
            with contextlib.suppress(RPCError):
                self.request("stop", {"Stop": stream.seq})

    def close(self) -> None:
        with self._lock:
            self._closed = True
            subs = list(self._subs.values())
            self._subs.clear()
            self._wire.close()
        for stream in subs:
            stream.end()
        self._thread.join(timeout=5)

    # --- the reader thread --------------------------------------------------------------

    def _read_loop(self) -> None:
        while not self._closed:
            try:
                events = self._wire.read_events(time.monotonic() + POLL_SECONDS)
            except RPCTimeout:
                continue  # nothing to read; look at _closed again
            except SerfBridgeError as exc:
                if self._closed:
                    return
                self._fail_pending(exc)
                self._reconnect()
                continue
            self._dispatch(events)

    def _dispatch(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, Reply):
                self._on_reply(event)
            elif isinstance(event, StreamRecord):
                with self._lock:
                    stream = self._subs.get(event.seq)
                if stream is not None:
                    stream.put(event.item)
            elif isinstance(event, StreamEnded):
                with self._lock:
                    stream = self._subs.pop(event.seq, None)
                if stream is not None:
                    stream.end()

    def _on_reply(self, reply: Reply) -> None:
        with self._lock:
            slot = self._slots.pop(reply.seq, None)
            stream = self._subs.get(reply.seq) if reply.error else None
            if stream is not None and slot is None:  # a re-subscription was refused
                del self._subs[reply.seq]
        if slot is not None:
            slot.reply = reply
            slot.event.set()
        elif stream is not None:
            stream.put(agent_error(reply.command, reply.error))

    def _fail_pending(self, exc: SerfBridgeError) -> None:
        with self._lock:
            slots, self._slots = self._slots, {}
            queries = {s: st for s, st in self._subs.items() if st.command == "query"}
            for seq in queries:
                del self._subs[seq]
        for slot in slots.values():
            slot.error = exc
            slot.event.set()
        for stream in queries.values():
            stream.put(TransportError(f"connection lost during query: {exc}"))

    def _reconnect(self) -> None:
        """Re-dial with backoff until it works or the client closes; re-subscribe streams."""
        self._wire.close()
        retrying = tenacity.Retrying(
            wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
            retry=tenacity.retry_if_exception_type(RPCError),
            stop=lambda _state: self._closed,
            reraise=True,
        )
        try:
            wire = retrying(
                Wire.open,
                self._connect,
                auth_key=self._auth_key,
                timeout=self.timeout,
                name=self.name,
            )
        except RPCError:
            return  # closed while we were retrying
        self._resubscribe(wire)

    def _resubscribe(self, wire: Wire) -> None:
        with self._lock:
            if self._closed:
                wire.close()
                return
            self._wire = wire
            self.reconnects += 1
            streams = list(self._subs.values())
            self._subs.clear()
            for stream in streams:
                stream.seq = wire.queue(stream.command, stream.body)
                self._subs[stream.seq] = stream
            wire.flush()
        for stream in streams:
            stream.put(Reconnected())
