"""The Serf RPC protocol as a pure state machine: bytes in, events out, no sockets.

Like h11's ``Connection``: the caller feeds what it read with ``receive_data()``, takes
events from ``next_events()``, and writes whatever ``data_to_send()`` returns. Callers:
``rpc.wire`` (the I/O shell) and the tests. This module owns every rule of
``reference/serf-rpc.md`` §1-§6:

* the Seq counter (strictly increasing, never reused, §1.2) and ONE table from each Seq
  to an explicit ``Expectation``: its reply ``Shape`` (a bare header, a header plus a
  body, or a stream: ack, then header+record per item, §1) and its ``Phase``;
* handshake and auth gating: requests made earlier are held back and only written once
  the handshake (and auth, when we have a key) succeeded (§1.1, §2);
* stop-then-drain: records of a stopped stream may still arrive after the ``stop``
  reply; they are read as header+record and dropped (§1.2). The agent buffers at most
  512 records per stream (§4), so an entry goes after ``DRAIN_RECORDS`` of them, and
  only the ``MAX_DRAINING`` most recently stopped streams are kept at all;
* the ``Authentication required`` echo: a refused request's body is re-read by the
  agent as a header and answered twice, so the echo is swallowed (§1.1);
* agent error strings become typed exceptions (``agent_error``);
* every message is bounded (a fake agent on the port can send anything): at most
  ``MAX_LIST`` items in a list or map, ``MAX_STRING`` bytes per string,
  ``MAX_MESSAGE_BYTES`` on the wire and ``MAX_MESSAGE_ITEMS`` decoded values per header
  or body; beyond any of them the connection fails before the rest is decoded.

Two error classes, as in h11: bytes from the peer that break a rule raise
``RemoteProtocolError`` and nothing else; our own misuse of the core (an unknown
command, a missing body, using a failed connection) raises ``LocalProtocolError``.
The wire keys ``Command``/``Seq``/``Error`` appear only here. Must not import socket,
time or threading.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

import msgpack

from serfbridge.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from serfbridge.rpc import models
from serfbridge.rpc.events import (
    Event,
    Ready,
    Reply,
    StreamEnded,
    StreamRecord,
    agent_error,
)
from serfbridge.rpc.models import ReplyBody, StreamItem

IPC_VERSION = 1
_Sized = TypeVar("_Sized", list[object], dict[object, object])
#: Members per reply, and items per list or map. Serf clusters of community networks
#: have hundreds of members; thousands are rare.
MAX_LIST = 10_000
MAX_STRING = 256 * 1024  # bytes per string or binary (names, tags, payloads, log lines)
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # one header or body on the wire
#: Lists and maps, and their items, decoded per header or body: a full reply of
#: ``MAX_LIST`` members with their tags takes about 30 per member.
MAX_MESSAGE_ITEMS = 400_000
#: Records a stopped stream may still send: the agent's 512-record buffer plus the one
#: its sender had already taken when the stop came (§1.2, §4).
DRAIN_RECORDS = 513
#: Stopped streams whose late records are still recognised; an older one's record then
#: fails the connection (the client re-dials), which beats a table that only grows.
MAX_DRAINING = 256

#: Commands whose reply is header + body, even when Error is set (§1).
_BODY_PARSERS: dict[str, Callable[[object], ReplyBody]] = {
    "join": models.parse_join,
    "members": models.parse_members,
    "members-filtered": models.parse_members,
    "stats": models.parse_stats,
    "get-coordinate": models.parse_coordinate,
}
#: Streaming commands: a bare ack, then header + record per item (§4, §5).
_RECORD_PARSERS: dict[str, Callable[[object], StreamItem]] = {
    "stream": models.parse_event_record,
    "monitor": models.parse_log_record,
    "query": models.parse_query_record,
}
_SETUP = frozenset({"handshake", "auth"})
#: Commands that take a request body; the rest must be sent without one (§1.1).
_TAKES_BODY = _SETUP | {
    "event",
    "force-leave",
    "join",
    "members-filtered",
    "tags",
    "stream",
    "monitor",
    "stop",
    "query",
    "respond",
    "get-coordinate",
}
_NO_BODY = frozenset({"members", "leave", "stats"})
COMMANDS = _TAKES_BODY | _NO_BODY
#: Early rejections that come without a body even for body commands (§1).
_NO_BODY_ERRORS = frozenset(
    {"Handshake required", "Authentication required", "Unsupported command"}
)


class State(enum.Enum):
    HANDSHAKING = "handshaking"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    FAILED = "failed"  # handshake/auth refused or the peer broke the protocol


class Shape(enum.Enum):
    """What the agent sends for a Seq (§1)."""

    HEADER = "a bare header"
    HEADER_BODY = "a header, then a body"
    STREAM = "a bare ack, then header+record per item"


class Phase(enum.Enum):
    """Where a Seq is in its life; every phase but REPLY reads header+record or drops."""

    REPLY = "awaiting the reply"
    STREAMING = "records follow"
    DRAINING = "stopped; late records are dropped"  # §1.2
    ECHO = "awaiting the second 'Authentication required'"  # §1.1


@dataclass(frozen=True)
class Expectation:
    """What one Seq still expects from the agent. The single per-Seq record of the core."""

    command: str
    shape: Shape
    sent_body: bool
    phase: Phase = Phase.REPLY
    stop_target: int | None = None  # for ``stop``: the Seq it stops
    drain_left: int = 0  # for DRAINING: records the agent may still send


def _shape_of(command: str) -> Shape:
    if command in _BODY_PARSERS:
        return Shape.HEADER_BODY
    return Shape.STREAM if command in _RECORD_PARSERS else Shape.HEADER


def _header_fields(obj: object) -> tuple[int, str]:
    hdr = models._map(obj, "response header")
    seq, error = hdr.get("Seq"), hdr.get("Error", "")
    if not isinstance(seq, int) or isinstance(seq, bool) or not isinstance(error, str):
        raise RemoteProtocolError(f"malformed response header: {hdr!r}")
    return seq, error


@dataclass
class Connection:
    """One RPC connection's protocol state. Not thread-safe: callers serialise access."""

    auth_key: str | None = None
    first_seq: int = 0
    state: State = State.HANDSHAKING
    _seq: int = field(init=False)
    _out: bytearray = field(init=False, default_factory=bytearray)
    _held: list[bytes] = field(init=False, default_factory=list)
    _expected: dict[int, Expectation] = field(init=False, default_factory=dict)
    #: A header was read and its body or record comes next: (seq, expectation, error).
    _body_for: tuple[int, Expectation, str] | None = field(init=False, default=None)
    _events: list[Event] = field(init=False, default_factory=list)
    _unpacker: msgpack.Unpacker = field(init=False)
    _fed: int = field(init=False, default=0)  # bytes fed to the unpacker so far
    _started: int = field(init=False, default=0)  # where the message being read began
    _items: int = field(init=False, default=0)  # decoded in the message being read

    def __post_init__(self) -> None:
        self._seq = self.first_seq
        self._unpacker = msgpack.Unpacker(
            raw=False,
            unicode_errors="surrogateescape",
            max_buffer_size=MAX_MESSAGE_BYTES,
            max_str_len=MAX_STRING,
            max_bin_len=MAX_STRING,
            max_array_len=MAX_LIST,
            max_map_len=MAX_LIST,
            max_ext_len=MAX_STRING,
            object_hook=self._count,
            list_hook=self._count,
        )
        self._write("handshake", {"Version": IPC_VERSION})

    # --- sending -----------------------------------------------------------------------

    def send(self, command: str, body: Mapping[str, object] | None = None) -> int:
        """Queue a request and return its Seq. Held back until the connection is ready."""
        if command not in COMMANDS or command in _SETUP:
            raise LocalProtocolError(f"not a request this client sends: {command!r}")
        if (body is not None) != (command in _TAKES_BODY):
            raise LocalProtocolError(f"{command!r} {'needs' if body is None else 'takes no'} body")
        self._check_usable()
        return self._write(command, body, hold=self.state is not State.READY)

    def data_to_send(self) -> bytes:
        data = bytes(self._out)
        self._out.clear()
        return data

    def _write(self, command: str, body: Mapping[str, object] | None, *, hold: bool = False) -> int:
        seq = self._seq
        try:
            data: bytes = msgpack.packb({"Command": command, "Seq": seq})
            if body is not None:
                data += msgpack.packb(dict(body), use_bin_type=True)
        except (TypeError, ValueError, UnicodeEncodeError, OverflowError) as exc:
            raise LocalProtocolError(f"cannot encode {command!r} request: {exc}") from exc
        self._seq += 1
        target = body.get("Stop") if command == "stop" and body is not None else None
        self._expected[seq] = Expectation(
            command,
            _shape_of(command),
            body is not None,
            stop_target=target if type(target) is int else None,
        )
        (self._held.append if hold else self._out.extend)(data)
        return seq

    def _check_usable(self) -> None:
        if self.state is State.FAILED:
            raise LocalProtocolError("connection failed; open a new one")

    # --- receiving ---------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes read from the socket (any split is fine)."""
        self._check_usable()
        try:
            self._unpacker.feed(data)
            self._fed += len(data)
            for obj in self._unpacker:
                self._check_size(self._unpacker.tell() - self._started)
                self._started, self._items = self._unpacker.tell(), 0
                self._on_object(obj)
            self._check_size(self._fed - self._started)  # a message not yet complete
        except ProtocolError:
            self.state = State.FAILED
            raise
        except ValueError as exc:
            self.state = State.FAILED
            if "exceeds max_" in str(exc):
                raise RemoteProtocolError(f"the agent sent an oversized message: {exc}") from exc
            raise RemoteProtocolError(f"undecodable data from agent: {exc!r}") from exc
        except Exception as exc:  # msgpack raises many types on garbage; all mean the same
            self.state = State.FAILED
            raise RemoteProtocolError(f"undecodable data from agent: {exc!r}") from exc

    def _count(self, value: _Sized) -> _Sized:
        """Called by msgpack for each list and map as it is built (the hot path of a big
        ``members`` reply: two calls per member)."""
        self._items += len(value) + 1
        if self._items <= MAX_MESSAGE_ITEMS:
            return value
        raise RemoteProtocolError(
            f"the agent sent an oversized message: more than {MAX_MESSAGE_ITEMS} values"
        )

    @staticmethod
    def _check_size(size: int) -> None:
        if size > MAX_MESSAGE_BYTES:
            raise RemoteProtocolError(
                f"the agent sent an oversized message: more than {MAX_MESSAGE_BYTES} bytes"
            )

    def next_events(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    def _on_object(self, obj: object) -> None:
        if self._body_for is None:
            self._on_header(*_header_fields(obj))
            return
        seq, expected, error = self._body_for
        self._body_for = None
        if expected.phase is Phase.REPLY:
            del self._expected[seq]
            body = _BODY_PARSERS[expected.command](obj)
            self._events.append(Reply(seq, expected.command, error, body))
        elif expected.phase is Phase.STREAMING:
            self._on_record(seq, expected.command, obj=obj)
        else:
            self._on_drained(seq, expected)

    def _on_header(self, seq: int, error: str) -> None:
        expected = self._expected.get(seq)
        if expected is None:
            raise RemoteProtocolError(f"response for Seq {seq}, which has no request outstanding")
        if expected.phase is Phase.ECHO:
            del self._expected[seq]  # the re-read body's second "Authentication required"
        elif expected.phase is not Phase.REPLY:
            self._body_for = (seq, expected, error)  # a record (or a drained one) follows
        elif expected.command in _SETUP:
            del self._expected[seq]
            self._on_setup_reply(seq, expected.command, error=error)
        elif expected.shape is Shape.HEADER_BODY and error not in _NO_BODY_ERRORS:
            self._body_for = (seq, expected, error)
        else:
            self._on_bare_reply(seq, expected, error=error)

    def _on_bare_reply(self, seq: int, expected: Expectation, *, error: str) -> None:
        if error == "Authentication required" and expected.sent_body:
            self._expected[seq] = replace(expected, phase=Phase.ECHO)
        elif expected.shape is Shape.STREAM and not error:
            self._expected[seq] = replace(expected, phase=Phase.STREAMING)
        else:
            del self._expected[seq]
        if expected.stop_target is not None and not error:
            self._on_stopped(expected.stop_target)
        self._events.append(Reply(seq, expected.command, error))

    def _on_setup_reply(self, seq: int, command: str, *, error: str) -> None:
        self._events.append(Reply(seq, command, error))
        if error:
            self.state = State.FAILED
            self._held.clear()
        elif command == "handshake" and self.auth_key is not None:
            self.state = State.AUTHENTICATING
            self._write("auth", {"AuthKey": self.auth_key})
        else:
            self.state = State.READY
            for data in self._held:
                self._out.extend(data)
            self._held.clear()
            self._events.append(Ready())

    def _on_stopped(self, target: int) -> None:
        expected = self._expected.pop(target, None)
        if expected is None or expected.phase is not Phase.STREAMING:
            if expected is not None:  # not a stream: leave it as it was
                self._expected[target] = expected
            return
        # Re-inserted at the end, so the table's order of draining entries is stop order.
        self._expected[target] = replace(expected, phase=Phase.DRAINING, drain_left=DRAIN_RECORDS)
        draining = [s for s, e in self._expected.items() if e.phase is Phase.DRAINING]
        for old in draining[: max(0, len(draining) - MAX_DRAINING)]:
            del self._expected[old]

    def _on_drained(self, seq: int, expected: Expectation) -> None:
        if expected.drain_left <= 1:
            del self._expected[seq]  # the agent's buffer is empty: the stream has ended
        else:
            self._expected[seq] = replace(expected, drain_left=expected.drain_left - 1)

    def _on_record(self, seq: int, command: str, *, obj: object) -> None:
        item = _RECORD_PARSERS[command](obj)
        self._events.append(StreamRecord(seq, item))
        if isinstance(item, models.QueryRecord) and item.type == "done":
            del self._expected[seq]
            self._events.append(StreamEnded(seq))

    # --- introspection -----------------------------------------------------------------

    def is_stream(self, seq: int) -> bool:
        expected = self._expected.get(seq)
        return expected is not None and expected.phase is Phase.STREAMING

    def maybe_expectation(self, seq: int) -> Expectation | None:
        """What ``seq`` still expects, or None once nothing more can come for it."""
        return self._expected.get(seq)

    @property
    def outstanding(self) -> int:
        """Seqs the table still holds (requests, streams, drains, echoes)."""
        return len(self._expected)


__all__ = [
    "COMMANDS",
    "Connection",
    "Event",
    "Expectation",
    "Phase",
    "Ready",
    "Reply",
    "Shape",
    "State",
    "StreamEnded",
    "StreamRecord",
    "agent_error",
]
