"""The client of one Serf agent: blocking commands and stoppable streams.

``SerfClient`` keeps two kinds of connection to one agent, because the agent runs the
requests of a connection strictly one after another (``reference/serf-rpc.md`` §1):

* a *command* connection for request/reply commands (``members``, ``tags``, ...), used
  under a lock by one caller at a time; a slow ``tags`` never stalls event delivery;
* a *stream* connection (``rpc.hub``) owned by a reader thread, carrying ``stream``,
  ``monitor`` and ``query`` subscriptions plus ``respond`` (which must use the
  connection that saw the query), re-dialled and re-subscribed when it drops.

Both run over a ``Transport`` (``rpc.transport``): TCP to a real agent by default, or
whatever ``connect=`` makes (the tests' in-memory fake agent). Every request has a
timeout. Transport and protocol failures arrive as our error types; agent error strings
become the typed ``AgentError`` family. This module must not parse or build wire
messages itself (``protocol.py`` does) nor dial sockets (``transport.py`` does). It
never logs the auth key.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterable, Mapping

from serfbridge import defaults, localpeers
from serfbridge.errors import ProtocolError, RPCError, TransportError
from serfbridge.re2syntax import check_go_regex
from serfbridge.rpc import budget
from serfbridge.rpc.events import Reply
from serfbridge.rpc.hub import StreamHub
from serfbridge.rpc.models import Coordinate, Member
from serfbridge.rpc.stream import Stream
from serfbridge.rpc.transport import Connector, connect_tcp, split_addr
from serfbridge.rpc.wire import Wire, dial

DEFAULT_ADDR = defaults.RPC_ADDR
DEFAULT_TIMEOUT = 10.0


class SerfClient:
    """A client for one Serf agent's RPC port. Thread-safe; close it when done."""

    def __init__(
        self,
        addr: str = DEFAULT_ADDR,
        *,
        auth_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        connect_attempts: int = 3,
        tag_limit: int = defaults.TAG_LIMIT,
        trusted_uids: frozenset[int] | None = None,
        connect: Connector | None = None,
    ) -> None:
        """``trusted_uids``: who may own the agent's port on this host (root and our own
        user when None; ``localpeers.trusted_uids``). ``connect``: makes the transport
        (TCP to ``addr`` with that check when None)."""
        split_addr(addr)
        if connect is None:
            trusted = localpeers.trusted_uids() if trusted_uids is None else trusted_uids
            connect = functools.partial(connect_tcp, addr, trusted=trusted)
        self._connect = connect
        self.addr = addr
        self.timeout = timeout
        self.tag_limit = tag_limit
        self._auth_key = auth_key or None  # an empty key means "no auth" (§2)
        self._attempts = connect_attempts
        self._lock = threading.Lock()
        self._wire: Wire | None = None
        self._hub: StreamHub | None = None
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
                return self._call_once(command, body, timeout=timeout)
            except TransportError:
                # A kept connection found dead (the agent restarted since the last call):
                # redial once. A fresh connection that fails is a real failure.
                if not reused:
                    raise
            return self._call_once(command, body, timeout=timeout)

    def _call_once(
        self, command: str, body: Mapping[str, object] | None, *, timeout: float | None
    ) -> Reply:
        if self._wire is None:
            self._wire = dial(
                self._connect,
                auth_key=self._auth_key,
                timeout=self.timeout,
                attempts=self._attempts,
                name=self.addr,
            )
        wire = self._wire
        try:
            return self._roundtrip(wire, command, body=body, timeout=timeout or self.timeout)
        except RPCError:
            # Timed out or broken: the reply may still come, so this connection is done.
            wire.close()
            self._wire = None
            raise

    def _roundtrip(
        self, wire: Wire, command: str, *, body: Mapping[str, object] | None, timeout: float
    ) -> Reply:
        seq = wire.queue(command, body)
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
        budget.check_fits(
            result,
            limit=self.tag_limit,
            refusal="tag set would take {size} bytes; the agent's limit is {limit} bytes "
            "(nothing was sent)",
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

    def get_coordinate(self, node: str) -> Coordinate | None:
        body = self._request("get-coordinate", {"Node": node}).body
        assert body is None or isinstance(body, Coordinate)
        return body

    # --- the stream connection ----------------------------------------------------------

    def _stream_hub(self) -> StreamHub:
        with self._hub_lock:
            if self._hub is None:
                self._hub = StreamHub(
                    self._connect,
                    auth_key=self._auth_key,
                    timeout=self.timeout,
                    attempts=self._attempts,
                    name=self.addr,
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


__all__ = [
    "DEFAULT_ADDR",
    "ProtocolError",
    "SerfClient",
    "Stream",
    "TransportError",
    "split_addr",
]
