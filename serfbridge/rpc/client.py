"""The socket shell around the pure protocol core: blocking commands and stoppable streams.

``SerfClient`` keeps two kinds of TCP connection to one agent, because the agent runs
the requests of a connection strictly one after another (``reference/serf-rpc.md`` §1):

* a *command* connection for request/reply commands (``members``, ``tags``, ...), used
  under a lock by one caller at a time; a slow ``tags`` never stalls event delivery;
* a *stream* connection owned by a reader thread, carrying ``stream``, ``monitor`` and
  ``query`` subscriptions plus ``respond`` (which must use the connection that saw the
  query). When it drops, the reader re-dials with backoff, redoes handshake and auth,
  and re-subscribes every open stream; each stream then yields ``Reconnected``.

Every request has a timeout. Socket and protocol failures become our error types here
(``TransportError``, ``RPCTimeout``, ``ProtocolError``); agent error strings become the
typed ``AgentError`` family. This module must not parse or build wire messages itself:
that is ``protocol.py``'s job. It never logs the auth key.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import tenacity

from serfbridge import localpeers
from serfbridge.errors import (
    BudgetError,
    ProtocolError,
    RPCError,
    RPCTimeout,
    SerfBridgeError,
    TransportError,
    UsageError,
)
from serfbridge.re2syntax import check_go_regex
from serfbridge.rpc import budget
from serfbridge.rpc.models import (
    Coordinate,
    KeyResponse,
    Member,
    Reconnected,
    StreamItem,
)
from serfbridge.rpc.protocol import (
    Connection,
    Ready,
    Reply,
    StreamEnded,
    StreamRecord,
    agent_error,
)

DEFAULT_ADDR = "127.0.0.1:7373"
DEFAULT_TIMEOUT = 10.0
#: Items a stream buffers locally before it drops (the agent itself buffers 512).
STREAM_BUFFER = 10_000


def split_addr(addr: str) -> tuple[str, int]:
    """``host:port`` (or ``[v6]:port``) → (host, port); raises UsageError when malformed."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"RPC address must be host:port, got {addr!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


class _Wire:
    """One dialled, handshaken (and authenticated) TCP connection plus its protocol core.

    Before anything is sent, a peer on this host must be the agent's user: while the
    agent restarts, any local user can listen on its port (``localpeers``)."""

    def __init__(
        self, addr: str, auth_key: str | None, timeout: float, trusted: frozenset[int]
    ) -> None:
        self.addr = addr
        try:
            self.sock = socket.create_connection(split_addr(addr), timeout=timeout)
            # Requests are small and latency-bound; don't let Nagle hold them back.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            raise TransportError(f"cannot reach the serf agent at {addr}: {exc}") from exc
        try:
            localpeers.check_agent_owner(self.sock, trusted, addr)
        except BaseException:
            self.close()
            raise
        self.core = Connection(auth_key=auth_key)
        try:
            self.flush()
            self._wait_ready(time.monotonic() + timeout)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, deadline: float) -> None:
        while True:
            for event in self.read_events(deadline):
                if isinstance(event, Reply) and event.error:
                    raise agent_error(event.command, event.error)
                if isinstance(event, Ready):
                    return

    def flush(self) -> None:
        data = self.core.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError as exc:
                raise TransportError(f"lost the connection to {self.addr}: {exc}") from exc

    def feed(self, data: bytes) -> list[object]:
        if not data:
            raise TransportError(f"the serf agent at {self.addr} closed the connection")
        self.core.receive_data(data)
        self.flush()  # auth goes out right after the handshake reply
        return list(self.core.next_events())

    def read_events(self, deadline: float) -> list[object]:
        """Block until the core has events, or raise RPCTimeout at ``deadline``."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RPCTimeout(f"the serf agent at {self.addr} did not answer in time")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError as exc:
                raise RPCTimeout(f"the serf agent at {self.addr} did not answer in time") from exc
            except OSError as exc:
                raise TransportError(f"lost the connection to {self.addr}: {exc}") from exc
            events = self.feed(data)
            if events:
                return events

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


def _dial(
    addr: str, auth_key: str | None, timeout: float, attempts: int, trusted: frozenset[int]
) -> _Wire:
    """Dial with exponential backoff on transport errors (agent restarting, port not open)."""
    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max(1, attempts)),
        wait=tenacity.wait_exponential(multiplier=0.05, max=2.0),
        retry=tenacity.retry_if_exception_type(TransportError),
        reraise=True,
    )
    return retrying(_Wire, addr, auth_key, timeout, trusted)


class SerfClient:
    """A client for one Serf agent's RPC port. Thread-safe; close it when done."""

    def __init__(
        self,
        addr: str = DEFAULT_ADDR,
        *,
        auth_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_attempts: int = 3,
        tag_limit: int = budget.DEFAULT_TAG_LIMIT,
        trusted_uids: frozenset[int] | None = None,
    ) -> None:
        """``trusted_uids``: who may own the agent's port on this host (root and our own
        user when None; ``localpeers.trusted_uids``)."""
        split_addr(addr)
        self._trusted = localpeers.trusted_uids() if trusted_uids is None else trusted_uids
        self.addr = addr
        self.timeout = timeout
        self.tag_limit = tag_limit
        self._auth_key = auth_key or None  # an empty key means "no auth" (§2)
        self._attempts = connect_attempts
        self._lock = threading.Lock()
        self._wire: _Wire | None = None
        self._hub: _StreamHub | None = None
        self._hub_lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"SerfClient({self.addr!r}, auth={'yes' if self._auth_key else 'no'})"

    def __enter__(self) -> SerfClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            if self._wire is not None:
                self._wire.close()
                self._wire = None
        with self._hub_lock:
            if self._hub is not None:
                self._hub.close()
                self._hub = None

    # --- the command connection ---------------------------------------------------------

    def call(
        self,
        command: str,
        body: Mapping[str, object] | None = None,
        *,
        timeout: float | None = None,
    ) -> Reply:
        """Send one request on the command connection and return its reply (errors kept)."""
        with self._lock:
            reused = self._wire is not None
            try:
                return self._call_once(command, body, timeout)
            except TransportError:
                # A kept connection found dead (the agent restarted since the last call):
                # redial once. A fresh connection that fails is a real failure.
                if not reused:
                    raise
            return self._call_once(command, body, timeout)

    def _call_once(
        self, command: str, body: Mapping[str, object] | None, timeout: float | None
    ) -> Reply:
        if self._wire is None:
            self._wire = _dial(
                self.addr, self._auth_key, self.timeout, self._attempts, self._trusted
            )
        wire = self._wire
        try:
            return self._roundtrip(wire, command, body, timeout or self.timeout)
        except (RPCError, OSError):
            # Timed out or broken: the reply may still come, so this connection is done.
            wire.close()
            self._wire = None
            raise

    def _roundtrip(
        self, wire: _Wire, command: str, body: Mapping[str, object] | None, timeout: float
    ) -> Reply:
        seq = wire.core.send(command, body)
        wire.flush()
        deadline = time.monotonic() + timeout
        while True:
            for event in wire.read_events(deadline):
                if isinstance(event, Reply) and event.seq == seq:
                    if event.error in ("Unsupported command",) or command == "leave":
                        wire.close()  # the agent closes these connections (§6)
                        self._wire = None
                    return event

    def _request(
        self,
        command: str,
        body: Mapping[str, object] | None = None,
        *,
        timeout: float | None = None,
    ) -> Reply:
        reply = self.call(command, body, timeout=timeout)
        reply.raise_for_error()
        return reply

    def members(self) -> tuple[Member, ...]:
        body = self._request("members").body
        assert isinstance(body, tuple)
        return body

    def members_filtered(
        self, *, tags: Mapping[str, str] | None = None, status: str = "", name: str = ""
    ) -> tuple[Member, ...]:
        """Members whose tags/status/name match the (anchored) regexes, as the agent filters."""
        for key, pattern in (tags or {}).items():
            check_go_regex(pattern, f"tag filter {key}", anchored=True)
        check_go_regex(status, "status filter", anchored=True)
        check_go_regex(name, "name filter", anchored=True)
        body = self._request(
            "members-filtered", {"Tags": dict(tags or {}), "Status": status, "Name": name}
        ).body
        assert isinstance(body, tuple)
        return body

    def stats(self) -> dict[str, dict[str, str]]:
        body = self._request("stats").body
        assert isinstance(body, dict)
        return body

    def local_tags(self) -> dict[str, str]:
        """This agent's own tags (from ``stats``, one round trip)."""
        return dict(self.stats().get("tags", {}))

    def tags(
        self,
        set_tags: Mapping[str, str] | None = None,
        delete: Iterable[str] = (),
        *,
        current: Mapping[str, str] | None = None,
    ) -> dict[str, str]:
        """Merge-set and delete tags; refuse an oversized result before sending anything.

        Returns the resulting tag set. ``current`` saves a ``stats`` call when the caller
        already knows the agent's tags.
        """
        set_tags, delete = dict(set_tags or {}), list(delete)
        now = dict(current) if current is not None else self.local_tags()
        result = budget.merged_tags(now, set_tags=set_tags, delete=delete)
        size = budget.encoded_tags_size(result)
        if size > self.tag_limit:
            raise BudgetError(
                f"tag set would take {size} bytes; the agent's limit is {self.tag_limit} bytes "
                "(nothing was sent)",
                size=size,
                limit=self.tag_limit,
            )
        self._request("tags", {"Tags": set_tags, "DeleteTags": delete})
        return result

    def join(self, addrs: Iterable[str], *, replay: bool = False) -> int:
        body = self._request("join", {"Existing": list(addrs), "Replay": replay}).body
        assert isinstance(body, int)
        return body

    def leave(self) -> None:
        """Leave gracefully; the agent then shuts down."""
        self._request("leave", timeout=max(self.timeout, 15.0))

    def force_leave(self, node: str, *, prune: bool = False) -> None:
        self._request("force-leave", {"Node": node, "Prune": prune})

    def event(self, name: str, payload: bytes = b"", *, coalesce: bool = True) -> None:
        self._request("event", {"Name": name, "Payload": payload, "Coalesce": coalesce})

    def _keys(self, command: str, key: str | None = None) -> KeyResponse:
        reply = self.call(command, {"Key": key} if key is not None else None)
        reply.raise_for_error()
        assert isinstance(reply.body, KeyResponse)
        return reply.body

    def install_key(self, key: str) -> KeyResponse:
        return self._keys("install-key", key)

    def use_key(self, key: str) -> KeyResponse:
        return self._keys("use-key", key)

    def remove_key(self, key: str) -> KeyResponse:
        return self._keys("remove-key", key)

    def list_keys(self) -> KeyResponse:
        return self._keys("list-keys")

    def get_coordinate(self, node: str) -> Coordinate | None:
        body = self._request("get-coordinate", {"Node": node}).body
        assert body is None or isinstance(body, Coordinate)
        return body

    # --- the stream connection ----------------------------------------------------------

    def _stream_hub(self) -> _StreamHub:
        with self._hub_lock:
            if self._hub is None:
                self._hub = _StreamHub(
                    self.addr, self._auth_key, self.timeout, self._attempts, self._trusted
                )
            return self._hub

    def stream(self, event_filter: str = "*") -> Stream:
        """Subscribe to events (``member-join,user:deploy``...); iterate, then ``stop()``."""
        return self._stream_hub().open("stream", {"Type": event_filter})

    def monitor(self, log_level: str = "INFO") -> Stream:
        return self._stream_hub().open("monitor", {"LogLevel": log_level})

    def query(
        self,
        name: str,
        payload: bytes = b"",
        *,
        filter_nodes: Iterable[str] = (),
        filter_tags: Mapping[str, str] | None = None,
        request_ack: bool = False,
        relay_factor: int = 0,
        timeout_s: float = 0.0,
    ) -> Stream:
        """Send a query; the stream yields ack/response records and ends after ``done``."""
        body = {
            "FilterNodes": list(filter_nodes),
            "FilterTags": dict(filter_tags or {}),
            "RequestAck": request_ack,
            "RelayFactor": relay_factor,
            "Timeout": int(timeout_s * 1e9),
            "Name": name,
            "Payload": payload,
        }
        return self._stream_hub().open("query", body)


_END = object()


@dataclass(eq=False)
class Stream(Iterator[StreamItem]):
    """An open subscription: iterate it (blocking) or ``get(timeout)``; ``stop()`` ends it."""

    hub: _StreamHub
    command: str
    body: Mapping[str, object]
    seq: int = -1
    dropped: int = 0
    _queue: queue.Queue[object] = field(default_factory=lambda: queue.Queue(STREAM_BUFFER))
    _done: bool = False

    def __iter__(self) -> Iterator[StreamItem]:
        return self

    def __next__(self) -> StreamItem:
        item = self._take(None)
        if item is None:
            raise StopIteration
        return item

    @property
    def done(self) -> bool:
        """True once the stream has ended (stopped, closed, or a query's ``done``)."""
        return self._done

    def get(self, timeout: float | None = None) -> StreamItem | None:
        """The next item, or None on timeout or when the stream has ended."""
        try:
            return self._take(timeout)
        except queue.Empty:
            return None

    def _take(self, timeout: float | None) -> StreamItem | None:
        if self._done:
            return None
        item = self._queue.get(timeout=timeout)
        if item is _END:
            self._done = True
            return None
        if isinstance(item, BaseException):
            self._done = True
            raise item
        return item  # type: ignore[return-value]

    def put(self, item: object) -> None:
        """Buffer an item; a full buffer drops records, but never the end or an error.

        The end marker and an exception are what unblock the reader, so when the buffer
        is full they push out the oldest record instead (counted in ``dropped``).
        """
        final = item is _END or isinstance(item, BaseException)
        while True:
            try:
                self._queue.put_nowait(item)
                return
            except queue.Full:
                if not final:
                    self.dropped += 1
                    return
            # Count an eviction only if it took a record: the reader may have emptied the
            # buffer in the meantime, and then the retry simply fits.
            with contextlib.suppress(queue.Empty):
                self._queue.get_nowait()
                self.dropped += 1

    def respond(self, query_id: int, payload: bytes) -> None:
        """Answer a query this stream saw (same connection, before its deadline)."""
        self.hub.request("respond", {"ID": query_id, "Payload": payload}).raise_for_error()

    def stop(self) -> None:
        """Stop the subscription; records still buffered by the agent are discarded."""
        self.hub.stop(self)
        self.put(_END)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _Slot:
    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: Reply | None = None
        self.error: BaseException | None = None


class _StreamHub:
    """The stream connection: a reader thread, open subscriptions, and reconnection."""

    def __init__(
        self,
        addr: str,
        auth_key: str | None,
        timeout: float,
        attempts: int,
        trusted: frozenset[int],
    ) -> None:
        self.addr, self._auth_key, self.timeout = addr, auth_key, timeout
        self._trusted = trusted
        self._lock = threading.RLock()
        self._subs: dict[int, Stream] = {}
        self._slots: dict[int, _Slot] = {}
        self._closed = False
        self.reconnects = 0
        self._wire = _dial(addr, auth_key, timeout, attempts, trusted)
        self._thread = threading.Thread(
            target=self._read_loop, name=f"serf-stream-{addr}", daemon=True
        )
        self._thread.start()

    def open(self, command: str, body: Mapping[str, object]) -> Stream:
        stream = Stream(self, command, body)
        reply = self.request(command, body, subscribe=stream)
        if reply.error:
            with self._lock:
                self._subs.pop(reply.seq, None)
            raise agent_error(command, reply.error)
        return stream

    def request(
        self, command: str, body: Mapping[str, object] | None, *, subscribe: Stream | None = None
    ) -> Reply:
        slot = _Slot()
        with self._lock:
            if self._closed:
                raise TransportError("client is closed")
            seq = self._wire.core.send(command, body)
            self._slots[seq] = slot
            if subscribe is not None:
                subscribe.seq = seq
                self._subs[seq] = subscribe  # before the ack: records may follow it at once
            self._wire.flush()
        if not slot.event.wait(self.timeout):
            with self._lock:
                self._slots.pop(seq, None)
                self._subs.pop(seq, None)
            raise RPCTimeout(f"the serf agent at {self.addr} did not answer {command!r} in time")
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
            stream.put(_END)
        self._thread.join(timeout=5)

    # --- the reader thread --------------------------------------------------------------

    def _read_loop(self) -> None:
        while not self._closed:
            wire = self._wire
            try:
                data = wire.sock.recv(65536) if self._wait_readable(wire) else None
                if data is None:
                    continue
                with self._lock:
                    events = wire.feed(data)
                self._dispatch(events)
            except (SerfBridgeError, OSError) as exc:
                if self._closed:
                    return
                self._fail_pending(exc)
                self._reconnect()

    def _wait_readable(self, wire: _Wire) -> bool:
        wire.sock.settimeout(0.5)  # wake up now and then to notice close()
        try:
            data = wire.sock.recv(1, socket.MSG_PEEK)
        except TimeoutError:
            return False
        except OSError as exc:
            raise TransportError(f"lost the connection to {self.addr}: {exc}") from exc
        if not data:
            raise TransportError(f"the serf agent at {self.addr} closed the connection")
        return True

    def _dispatch(self, events: list[object]) -> None:
        for event in events:
            if isinstance(event, Reply):
                self._on_reply(event)
            elif isinstance(event, StreamRecord):
                self._route(event.seq, event.item)
            elif isinstance(event, StreamEnded):
                with self._lock:
                    stream = self._subs.pop(event.seq, None)
                if stream is not None:
                    stream.put(_END)

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

    def _route(self, seq: int, item: StreamItem) -> None:
        with self._lock:
            stream = self._subs.get(seq)
        if stream is not None:
            stream.put(item)

    def _fail_pending(self, exc: BaseException) -> None:
        with self._lock:
            slots, self._slots = self._slots, {}
            queries = {s: st for s, st in self._subs.items() if st.command == "query"}
            for seq in queries:
                del self._subs[seq]
        error = exc if isinstance(exc, SerfBridgeError) else TransportError(str(exc))
        for slot in slots.values():
            slot.error = error
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
            wire = retrying(_Wire, self.addr, self._auth_key, self.timeout, self._trusted)
        except RPCError:
            return  # closed while we were retrying
        if self._closed:
            wire.close()
            return
        with self._lock:
            self._wire = wire
            self.reconnects += 1
            streams = list(self._subs.values())
            self._subs.clear()
            for stream in streams:
                stream.seq = wire.core.send(stream.command, stream.body)
                self._subs[stream.seq] = stream
            wire.flush()
        for stream in streams:
            stream.put(Reconnected())


__all__ = ["DEFAULT_ADDR", "ProtocolError", "SerfClient", "Stream", "split_addr"]
